"""One HTTP ``Range`` header against a file's length (RFC 9110, a single byte range): pure."""

from __future__ import annotations

import re

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeNotSatisfiable(Exception):
    """Malformed, several ranges, or outside the file: answered 416 (reason ``bad_range``)."""


def byte_range(header: str | None, length: int) -> tuple[int, int] | None:
    """(first, last) inclusive for ``header``, or None for the whole file (no Range header)."""
    if header is None:
        return None
    match = _RANGE.match(header.strip())
    if match is None or (not match.group(1) and not match.group(2)):
        raise RangeNotSatisfiable(f"unsupported Range {header!r} (one bytes=FIRST-LAST range)")
    first_text, last_text = match.groups()
    if not first_text:  # suffix: the last N bytes
        suffix = int(last_text)
        if suffix == 0 or length == 0:
            raise RangeNotSatisfiable(f"Range {header!r} selects no bytes of a {length}-byte file")
        return max(0, length - suffix), length - 1
    first = int(first_text)
    last = int(last_text) if last_text else length - 1
    if first >= length or last < first:
        raise RangeNotSatisfiable(f"Range {header!r} is outside a {length}-byte file")
    return first, min(last, length - 1)
