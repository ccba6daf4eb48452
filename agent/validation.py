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
from pathlib import Path
from typing import Any, TypeVar

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


def locate_line(source: str, path: tuple[str | int, ...]) -> int | None:
    """Best-effort 1-based line of a dotted key path in TOML source text.

    Array indices in the path are ignored (the first match wins), which is
    precise enough to point a user at the right place.
    """
    keys = tuple(str(p) for p in path if not isinstance(p, int))
    if not keys:
        return None
    table: tuple[str, ...] = ()
    best: int | None = None
    for number, line in enumerate(source.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            table = _split_dotted(header.group(1))
            if table == keys:
                best = best or number
            continue
        key = _KEY.match(line)
        if key:
            full = table + _split_dotted(key.group(1))
            if full == keys:
                return number
            if best is None and len(full) <= len(keys) and keys[: len(full)] == full:
                best = number  # inline table holding the key
    return best


def _model_at(model: type[BaseModel], loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """Walk ``loc`` through nested model fields; return the model that holds the last key."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(part)
        if field is None:
            return None
        current = _unwrap(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return current
    return None


def _unwrap(annotation: Any) -> Any:
    """Find a BaseModel inside Optional[...] / list[...] / dict[str, ...] annotations."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _unwrap(arg)
        if found is not None:
            return found
    return None


def suggest(name: str, candidates: list[str]) -> str | None:
    """The closest valid name to a misspelt one, if any is close."""
    match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return match[0] if match else None


def format_errors(
    model: type[BaseModel],
    exc: pydantic.ValidationError,
    *,
    origin: str,
    source: str | None = None,
    prefix: tuple[str | int, ...] = (),
) -> ConfigError:
    """Turn a pydantic error into one ConfigError listing every problem."""
    lines: list[str] = []
    first_hint: str | None = None
    for err in exc.errors():
        loc = tuple(err["loc"])
        full = prefix + loc
        key = ".".join(str(p) for p in full) or "(top level)"
        where = origin
        if source is not None:
            line = locate_line(source, full)
            if line is not None:
                where = f"{origin}:{line}"
        if err["type"] == "extra_forbidden":
            holder = _model_at(model, loc)
            msg = f"unknown key '{loc[-1]}'"
            if holder is not None:
                near = suggest(str(loc[-1]), list(holder.model_fields))
                if near:
                    msg += f"; did you mean '{near}'?"
                    first_hint = first_hint or f"rename '{loc[-1]}' to '{near}'"
                else:
                    allowed = ", ".join(sorted(holder.model_fields))
                    msg += f" (allowed: {allowed})"
        elif err["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = err["msg"]
            if "input" in err and err["type"] not in ("model_type", "dict_type"):
                msg += f" (got {err['input']!r})"
        lines.append(f"{where}: {key}: {msg}")
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
) -> M:
    """Validate a mapping into ``model`` or raise a ConfigError naming what is wrong."""
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise format_errors(model, exc, origin=origin, source=source, prefix=prefix) from exc


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
