"""Canonical JSON: key order, unicode, integers only, exact error texts."""

from __future__ import annotations

import math

import pytest

from agent.errors import ProtocolError
from agent.protocol.canonical import DOMAIN, canonical, parse_json


def test_sorted_keys_no_whitespace() -> None:
    assert canonical({"b": 1, "a": [True, None, "x"], "c": {"z": 0, "y": -1}}) == (
        b'{"a":[true,null,"x"],"b":1,"c":{"y":-1,"z":0}}'
    )


def test_unicode_is_utf8_not_escaped() -> None:
    assert canonical({"vélo": "😀"}) == '{"vélo":"😀"}'.encode()
    assert canonical({"k": 'a"b\\c\n'}) == b'{"k":"a\\"b\\\\c\\n"}'


def test_key_order_is_by_code_point() -> None:
    assert canonical({"é": 1, "z": 2, "A": 3, "a": 4}) == '{"A":3,"a":4,"z":2,"é":1}'.encode()


def test_domain() -> None:
    assert DOMAIN == b"edgeproof/v1:"


def test_float_refused_with_path() -> None:
    with pytest.raises(ProtocolError) as info:
        canonical({"body": {"latency_us": {"p50": 1.5}}})
    assert info.value.reason == "malformed"
    assert str(info.value) == (
        "body.latency_us.p50: float not allowed (got 1.5); use integers (ms, µs, basis points, micro-units)"
    )


def test_float_in_list_path() -> None:
    with pytest.raises(ProtocolError, match=r"^sketch\[2\]: float not allowed \(got 3.0\)"):
        canonical({"sketch": [1, 2, 3.0]})


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_refused(value: float) -> None:
    with pytest.raises(ProtocolError, match=r"float not allowed"):
        canonical({"x": value})


def test_non_string_key_refused() -> None:
    with pytest.raises(ProtocolError) as info:
        canonical({"a": {1: 2}})
    assert str(info.value) == "a: object key 1 is a int; keys must be strings"


def test_integer_range() -> None:
    assert canonical([2**64 - 1, -(2**63)]) == b"[18446744073709551615,-9223372036854775808]"
    with pytest.raises(ProtocolError, match=r"^\[0\]: integer out of range \(got 18446744073709551616\)"):
        canonical([2**64])


def test_bool_stays_bool() -> None:
    assert canonical({"t": True, "one": 1}) == b'{"one":1,"t":true}'


def test_lone_surrogate_refused() -> None:
    with pytest.raises(ProtocolError, match=r"^s: string is not valid Unicode"):
        canonical({"s": "\ud800"})


def test_bytes_refused() -> None:
    with pytest.raises(ProtocolError, match=r"^b: bytes is not a JSON value$"):
        canonical({"b": b"raw"})


def test_depth_bounded() -> None:
    deep: object = 1
    for _ in range(10):
        deep = [deep]
    with pytest.raises(ProtocolError, match=r"nested deeper than 8 levels"):
        canonical(deep)


def test_parse_refuses_floats_dups_nan_and_bad_utf8() -> None:
    assert parse_json(b'{"a":1}') == {"a": 1}
    with pytest.raises(ProtocolError, match=r"^float not allowed \(got 1\.0\)"):
        parse_json(b'{"a":1.0}')
    with pytest.raises(ProtocolError, match=r"^float not allowed \(got 1e3\)"):
        parse_json(b'{"a":1e3}')
    with pytest.raises(ProtocolError, match=r"^duplicate key 'a'$"):
        parse_json(b'{"a":1,"a":2}')
    with pytest.raises(ProtocolError, match=r"^NaN is not valid JSON$"):
        parse_json(b'{"a":NaN}')
    with pytest.raises(ProtocolError, match=r"^not UTF-8"):
        parse_json(b'{"a":"\xff"}')
    with pytest.raises(ProtocolError, match=r"^not JSON"):
        parse_json(b"[" * 5000)
    with pytest.raises(ProtocolError, match=r"^not JSON: Expecting value"):
        parse_json(b"")


def test_round_trip() -> None:
    obj = {"k": ["é", 0, -5, {"n": None}]}
    assert parse_json(canonical(obj)) == obj
