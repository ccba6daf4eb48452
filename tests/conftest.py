"""Loaded before every suite's conftest: the shared test helpers in tests/support assert, so let
pytest rewrite them (this must run before any suite imports them)."""

from __future__ import annotations

import pytest

pytest.register_assert_rewrite("tests.support")
