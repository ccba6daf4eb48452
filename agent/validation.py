"""Validate once, at the edge: TOML files and mappings -> typed models.

Config files, firmware profiles and model cards are all parsed here into
frozen pydantic models that refuse unknown keys.  A failure becomes a
:class:`~agent.errors.ConfigError` naming the file, the dotted key path, the
line in the file and, for a misspelt key, the nearest valid key.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import pydantic
from pydantic import BaseModel, ConfigDict

from agent.errors import ConfigError

M = TypeVar("M", bound=BaseModel)

_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(
    r"""^\s*((?:[A-Za-z0-9_\-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_\-]+|"[^"]*"|'[^']*'))*)\s*="""
)


class Strict(BaseModel):
    """Base for every validated model: unknown keys refused, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _split_dotted(text: str) -> tuple[str, ...]:
    parts = [p.strip().strip("\"'") for p in text.split(".")]
    return tuple(p for p in parts if p)


def _with_indices(
    names: tuple[str, ...], counts: dict[tuple[str, ...], int], is_array: bool
) -> tuple[str | int, ...]:
    """A table header's path with the current index of every array of tables in it."""
    path: list[str | int] = []
    for i, name in enumerate(names):
        path.append(name)
        prefix = names[: i + 1]
        if prefix in counts and (i < len(names) - 1 or is_array):
            path.append(counts[prefix] - 1)
    return tuple(path)


def _is_prefix(short: tuple[str | int, ...], long: tuple[str | int, ...]) -> bool:
    return len(short) < len(long) and long[: len(short)] == short


def locate_line(source: str, path: tuple[str | int, ...]) -> int | None:
    """Best-effort 1-based line of a key path (strings and array indices) in TOML source text.

    The key's own line when it is there; else the table header it names, the
    inline table holding it, or the nearest enclosing table header (where a
    missing key belongs).  ``[[array]]`` tables are counted, so ``outputs.1.name``
    points into the second ``[[outputs]]``.
    """
    target = tuple(path)
    if not any(isinstance(p, str) for p in target):
        return None
    table: tuple[str | int, ...] = ()
    counts: dict[tuple[str, ...], int] = {}
    header_hit: int | None = None
    inline_hit: int | None = None
    enclosing: tuple[int, int | None] = (0, None)
    for number, line in enumerate(source.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            names = _split_dotted(header.group(1))
            is_array = line.lstrip().startswith("[[")
            if is_array:
                counts[names] = counts.get(names, 0) + 1
            table = _with_indices(names, counts, is_array)
            if table == target:
                header_hit = header_hit or number
            elif _is_prefix(table, target) and len(table) > enclosing[0]:
                enclosing = (len(table), number)
            continue
        key = _KEY.match(line)
        if key:
            full = table + _split_dotted(key.group(1))
            if full == target:
                return number
            if inline_hit is None and _is_prefix(full, target):
                inline_hit = number  # inline table or array holding the key
    return header_hit or inline_hit or enclosing[1]


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The BaseModel classes inside an annotation (Optional, list, dict, Union, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in get_args(annotation):
        found += [m for m in _models_in(arg) if m not in found]
    return found


def _is_mapping(annotation: Any) -> bool:
    return get_origin(annotation) is dict


def _tag_member(members: list[type[BaseModel]], tag: str) -> type[BaseModel] | None:
    """The member of a discriminated union whose Literal discriminator field is ``tag``."""
    for member in members:
        for field in member.model_fields.values():
            if get_origin(field.annotation) is Literal and tag in get_args(field.annotation):
                return member
    return None


def resolve_loc(
    model: type[BaseModel], loc: tuple[str | int, ...]
) -> tuple[tuple[str | int, ...], type[BaseModel] | None]:
    """(the key path as written in the file, the model holding its last key).

    pydantic puts a discriminated union's tag into the error location
    (``decoder.raw.x`` for ``[decoder] kind = "raw"``, ``x = 1``); a file has no
    such key, so the tag is dropped.  Dict keys (``throughput.<class>``) stay.
    """
    current: type[BaseModel] | None = model
    holder: type[BaseModel] | None = model
    union: list[type[BaseModel]] = []
    dict_key = False
    clean: list[str | int] = []
    for part in loc:
        if isinstance(part, int):
            clean.append(part)
            continue
        if union:
            member = _tag_member(union, part)
            union = []
            if member is not None:
                current = holder = member
                continue
        if dict_key:
            dict_key = False
            clean.append(part)
            holder = current
            continue
        clean.append(part)
        holder = current
        field = current.model_fields.get(part) if current is not None else None
        if field is None:
            current = None
            continue
        models = _models_in(field.annotation)
        dict_key = _is_mapping(field.annotation)
        if len(models) == 1:
            current = models[0]
        else:
            current, union = None, models
    return tuple(clean), holder


def suggest(name: str, candidates: list[str]) -> str | None:
    """The closest valid name to a misspelt one, if any is close."""
    match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return match[0] if match else None


def suggestions(name: str, candidates: list[str], limit: int = 3) -> list[str]:
    """The closest valid names, when several are equally close (``rpi`` -> rpi4, rpi5), in name order."""
    scored = [(difflib.SequenceMatcher(None, name, c).ratio(), c) for c in candidates]
    best = max((score for score, _ in scored), default=0.0)
    if best < 0.6:
        return []
    return sorted(c for score, c in scored if score >= best - 1e-9)[:limit]


def did_you_mean(names: list[str]) -> str:
    quoted = [f"'{n}'" for n in names]
    return "did you mean " + (" or ".join(quoted) if len(quoted) <= 2 else ", ".join(quoted)) + "?"


def _short(value: Any) -> str | None:
    """A value worth echoing back in a message, or None (tables and long values are not)."""
    if isinstance(value, dict | list):
        return None
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _override_for(path: tuple[str | int, ...], overrides: Mapping[tuple[str, ...], str]) -> str | None:
    keys = tuple(str(p) for p in path)
    for key, where in overrides.items():
        if keys[: len(key)] == key:
            return where
    return None


def format_errors(
    model: type[BaseModel],
    exc: pydantic.ValidationError,
    *,
    origin: str,
    source: str | None = None,
    prefix: tuple[str | int, ...] = (),
    overrides: Mapping[tuple[str, ...], str] | None = None,
) -> ConfigError:
    """Turn a pydantic error into one ConfigError listing every problem.

    ``overrides`` maps key paths whose value did not come from the file (e.g.
    environment variables) to where it came from; problems under such a key
    name that place instead of a file line.
    """
    lines: list[str] = []
    first_hint: str | None = None
    for err in exc.errors():
        loc, holder = resolve_loc(model, tuple(err["loc"]))
        ctx = err.get("ctx") or {}
        kind = err["type"]
        if kind in ("union_tag_invalid", "union_tag_not_found"):
            loc = (*loc, str(ctx.get("discriminator", "kind")).strip("'"))
        full = prefix + loc
        where = origin
        override = _override_for(full, overrides or {})
        if override is not None:
            where = override
        elif source is not None:
            line = locate_line(source, full)
            if line is not None:
                where = f"{origin}:{line}"
        if kind == "extra_forbidden":
            msg = f"unknown key '{loc[-1]}'"
            if holder is not None:
                near = suggest(str(loc[-1]), list(holder.model_fields))
                if near:
                    msg += f"; did you mean '{near}'?"
                    first_hint = first_hint or f"rename '{loc[-1]}' to '{near}'"
                else:
                    allowed = ", ".join(sorted(holder.model_fields))
                    msg += f" (allowed: {allowed})"
        elif kind == "missing":
            msg = "required key is missing"
        elif kind == "union_tag_invalid":
            tags = [t.strip().strip("'") for t in str(ctx.get("expected_tags", "")).split(",")]
            msg = f"unknown {loc[-1]} '{ctx.get('tag')}' (expected one of: {', '.join(tags)})"
            near = suggest(str(ctx.get("tag")), tags)
            if near:
                msg += f"; did you mean '{near}'?"
                first_hint = first_hint or f'set {".".join(str(p) for p in loc)} = "{near}"'
        elif kind == "union_tag_not_found":
            msg = "required key is missing"
        elif kind == "value_error" and "error" in ctx:
            msg = str(ctx["error"])  # our own validators' messages, without pydantic's prefix
        else:
            msg = err["msg"]
            shown = _short(err.get("input"))
            if shown is not None and "input" in err:
                msg += f" (got {shown})"
        key = ".".join(str(p) for p in full)
        lines.append(f"{where}: {key}: {msg}" if key else f"{where}: {msg}")
    count = len(lines)
    head = lines[0] if count == 1 else f"{origin}: {count} problems\n  " + "\n  ".join(lines)
    return ConfigError(head, hint=first_hint)


def parse_mapping(
    model: type[M],
    data: Any,
    *,
    origin: str,
    source: str | None = None,
    prefix: tuple[str | int, ...] = (),
    overrides: Mapping[tuple[str, ...], str] | None = None,
) -> M:
    """Validate a mapping into ``model`` or raise a ConfigError naming what is wrong."""
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise format_errors(
            model, exc, origin=origin, source=source, prefix=prefix, overrides=overrides
        ) from exc


def read_toml(path: Path) -> tuple[dict[str, Any], str]:
    """Read a TOML file: (data, source text).  Errors name the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def load_toml(model: type[M], path: Path) -> M:
    """Read and validate one TOML file into ``model``."""
    data, text = read_toml(path)
    return parse_mapping(model, data, origin=str(path), source=text)
