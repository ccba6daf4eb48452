"""Canonical JSON: the exact bytes that are signed and hashed.

``canonical(obj)`` is ``json.dumps(obj, sort_keys=True, separators=(",", ":"),
ensure_ascii=False).encode("utf-8")`` applied to a value made only of

* ``dict`` with ``str`` keys, ``list`` (or ``tuple``, encoded as a list),
* ``str`` (valid Unicode: no lone surrogates; no normalisation is applied),
* ``int`` in ``[-2**63, 2**64 - 1]`` (so every value fits an i64 or a u64),
* ``bool`` and ``None``.

Floats are refused everywhere (also NaN and infinities): quantities are
integers in fixed units (ms, µs, basis points, micro-units).  Every refusal is a
:class:`~agent.errors.ProtocolError` whose message names the dotted path of the
offending value, e.g. ``body.latency_us.p50: float not allowed (got 1.5) ...``.

:func:`parse_json` is the strict reader for the wire: UTF-8 only, duplicate
keys refused, floats/NaN refused, nesting bounded.
"""

from __future__ import annotations

import json
from typing import Any

from agent.errors import ProtocolError

#: Prefix of every signed message (the signing domain).
DOMAIN = b"edgeproof/v1:"

INT_MIN = -(2**63)
INT_MAX = 2**64 - 1
#: Maximum nesting of objects/lists (the envelope itself is depth 1).
MAX_DEPTH = 8


def _path(parts: tuple[str | int, ...]) -> str:
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text or "(top level)"


def _utf8(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _plain(obj: Any, depth: int) -> bool:
    """True when ``obj`` is canonical-encodable, built only of the exact JSON types.

    The fast pass of :func:`check_value` (no paths are built, which cost more than the check
    itself on every message); False sends the value through the full check, which accepts it
    (a subclass, e.g. an ``IntEnum``) or names the dotted path of what is wrong.
    """
    if depth > MAX_DEPTH:
        return False
    kind = type(obj)
    if kind is str:
        return obj.isascii() or _utf8(obj)
    if kind is int:
        return bool(INT_MIN <= obj <= INT_MAX)
    if obj is None or kind is bool:
        return True
    inner = depth + 1
    if kind is dict:
        if obj and inner > MAX_DEPTH:
            return False
        for key, value in obj.items():
            if type(key) is not str or not (key.isascii() or _utf8(key)) or not _plain(value, inner):
                return False
        return True
    if kind is list or kind is tuple:
        return all(_plain(value, inner) for value in obj)
    return False


def check_value(obj: Any, path: tuple[str | int, ...] = ()) -> None:
    """Raise ProtocolError(reason="malformed") unless ``obj`` is canonical-encodable."""
    if _plain(obj, len(path)):
        return
    _check_value(obj, path)


def _check_value(obj: Any, path: tuple[str | int, ...]) -> None:
    if len(path) > MAX_DEPTH:
        raise ProtocolError(f"{_path(path)}: nested deeper than {MAX_DEPTH} levels", reason="malformed")
    if obj is None or isinstance(obj, bool):
        return
    if isinstance(obj, int):
        if not INT_MIN <= obj <= INT_MAX:
            raise ProtocolError(
                f"{_path(path)}: integer out of range (got {obj}); allowed -2**63 .. 2**64-1",
                reason="malformed",
            )
        return
    if isinstance(obj, float):
        raise ProtocolError(
            f"{_path(path)}: float not allowed (got {obj!r}); use integers (ms, µs, basis points, micro-units)",
            reason="malformed",
        )
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ProtocolError(
                f"{_path(path)}: string is not valid Unicode ({exc.reason})", reason="malformed"
            ) from exc
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise ProtocolError(
                    f"{_path(path)}: object key {key!r} is a {type(key).__name__}; keys must be strings",
                    reason="malformed",
                )
            _check_value(key, (*path, key))
            _check_value(value, (*path, key))
        return
    if isinstance(obj, list | tuple):
        for index, value in enumerate(obj):
            _check_value(value, (*path, index))
        return
    raise ProtocolError(f"{_path(path)}: {type(obj).__name__} is not a JSON value", reason="malformed")


def canonical(obj: Any) -> bytes:
    """The canonical UTF-8 JSON encoding of ``obj`` (see module doc)."""
    check_value(obj)
    return encode_checked(obj)


def encode_checked(obj: Any) -> bytes:
    """:func:`canonical` of a value :func:`check_value` (or :func:`parse_json`) has just accepted."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _refuse_float(text: str) -> Any:
    raise ProtocolError(
        f"float not allowed (got {text}); use integers (ms, µs, basis points, micro-units)",
        reason="malformed",
    )


#: Digits (sign included) of the longest integer literal accepted: 2**64 - 1 has 20 digits.
MAX_INT_DIGITS = 21


def _bounded_int(text: str) -> int:
    # Refuse before int() runs: a 5,000-digit literal would otherwise escape as a bare ValueError
    # (Python's int/str conversion limit), and a 4,000-digit one costs quadratic time.
    if len(text) > MAX_INT_DIGITS:
        raise ProtocolError(
            f"integer literal of {len(text)} characters; allowed -2**63 .. 2**64-1", reason="malformed"
        )
    return int(text)


def _refuse_constant(text: str) -> Any:
    raise ProtocolError(f"{text} is not valid JSON", reason="malformed")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ProtocolError(f"duplicate key {key!r}", reason="malformed")
        out[key] = value
    return out


def parse_json(data: bytes | str) -> Any:
    """Strictly parse wire JSON: UTF-8, no floats/NaN, no duplicate keys, bounded nesting."""
    if isinstance(data, bytes | bytearray):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"not UTF-8: {exc.reason} at byte {exc.start}", reason="malformed") from exc
    else:
        text = data
    try:
        obj = json.loads(
            text,
            parse_float=_refuse_float,
            parse_int=_bounded_int,
            parse_constant=_refuse_constant,
            object_pairs_hook=_no_duplicates,
        )
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except RecursionError as exc:
        raise ProtocolError("not JSON: nested too deeply") from exc
    except (ValueError, TypeError, OverflowError) as exc:  # a last line: nothing escapes unnamed
        raise ProtocolError(f"not JSON: {type(exc).__name__}: {str(exc)[:120]}") from exc
    check_value(obj)
    return obj
