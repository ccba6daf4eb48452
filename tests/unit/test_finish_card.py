"""models/build/finish_card.py: the challenge tolerance derived from measured distances."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

from agent.challenge_run import answer_matches, card_tolerance
from agent.inference.cards import load_card

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("finish_card", ROOT / "models" / "build" / "finish_card.py")
assert spec is not None and spec.loader is not None
finish_card = importlib.util.module_from_spec(spec)
spec.loader.exec_module(finish_card)


def test_tolerance_is_a_margin_over_the_spread_with_a_floor() -> None:
    assert finish_card.derive(0.0, 0.5) == 0.01
    assert finish_card.derive(0.01, 0.5) == 0.02
    with pytest.raises(SystemExit, match=r"would not stay under the closest dishonest answer \(0\.0150\)"):
        finish_card.derive(0.01, 0.015)


def test_card_gets_a_challenge_table_the_coordinator_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    card = tmp_path / "blazeface-short-range.toml"
    shutil.copyfile(ROOT / "models" / "blazeface-short-range.toml", card)
    shutil.copyfile(
        ROOT / "models" / "blazeface-short-range.tflite", tmp_path / "blazeface-short-range.tflite"
    )
    shutil.copyfile(ROOT / "models" / "blazeface_labels.txt", tmp_path / "blazeface_labels.txt")
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "distances-blazeface-short-range.json").write_text(
        json.dumps({"cpu": "aarch64-i8mm", "x86": "x86_64-avx2", "honest": [0.0] * 60 + [0.002]}),
        encoding="utf-8",
    )
    (dist / "dishonest-blazeface-short-range.json").write_text(
        json.dumps({"closest": [0.3, 0.05]}), encoding="utf-8"
    )
    text = card.read_text(encoding="utf-8")
    for _ in range(2):  # a second run replaces the table, it does not add one
        monkeypatch.setattr(sys, "argv", ["finish_card.py", str(card), "--distances", str(dist)])
        assert finish_card.main() == 0
    loaded = load_card(card).card
    assert loaded.challenge is not None
    assert (
        loaded.challenge.tolerance == 0.01
        and loaded.challenge.spread == 0.002
        and loaded.challenge.nonces == 61
    )
    assert loaded.challenge.measured_on == ["x86_64-avx2", "aarch64-i8mm (qemu-user)"]
    assert card.read_text(encoding="utf-8").count("[challenge]") == 1
    # the rest of the card is kept as it was (only [challenge] is replaced)
    assert card.read_text(encoding="utf-8").startswith(
        finish_card._strip_table(text, "[challenge]").rstrip("\n")
    )
    assert card_tolerance(loaded) == 0.01
    assert answer_matches(loaded, [1000] * 32, [1005] * 32)
    assert not answer_matches(loaded, [1000] * 32, [1200] * 32)
