"""Add what one machine cannot measure to a shipped card: other CPU classes and the challenge tolerance.

    .venv/bin/python models/build/finish_card.py models/efficientnet-lite0-int8.toml \\
        --distances /var/cache/edgeproof/arm64-root-bookworm/work/x86-reference \\
        [--run models/build/.cache/runs/aarch64 --model shipped]

* ``[challenge]``: from ``distances-<card>.json`` (written by tests/arm64 inside the arm64 root:
  the sketch distance between aarch64 and x86 for each of >= 50 nonces) and
  ``dishonest-<card>.json`` (the closest perturbed-input / different-model answer):
  ``tolerance = max(MARGIN * spread, FLOOR)``, refused unless it stays under the closest
  dishonest distance;
* ``[[measured]]`` for the CPU class of ``--run`` (variants.py run, on that CPU): agreement of
  ``--model`` with fp32 on the eval set, with its Wilson interval.

Replaces the card's previous ``[challenge]`` and the ``[[measured]]`` entry of that class.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from agent.inference import quantize as q  # noqa: E402
from agent.inference.cards import load_card  # noqa: E402

MARGIN = 2.0  # tolerance = MARGIN x the largest cross-architecture distance measured ...
FLOOR = 0.01  # ... but never under 1 %: another onnxruntime / LiteRT build reorders float sums


def derive(spread: float, closest_dishonest: float) -> float:
    tolerance = round(max(MARGIN * spread, FLOOR), 4)
    if tolerance >= closest_dishonest:
        raise SystemExit(
            f"tolerance {tolerance} would not stay under the closest dishonest answer "
            f"({closest_dishonest:.4f}): the challenge cannot separate them for this model"
        )
    return tolerance


def _strip_table(text: str, header: str) -> str:
    """Remove every ``header`` table (up to the next table header or the end)."""
    pattern = re.compile(rf"\n*^{re.escape(header)}\n(?:(?!^\[).*\n?)*", re.MULTILINE)
    return pattern.sub("\n", text).rstrip("\n") + "\n"


def challenge_table(card: Path, distances: Path) -> str:
    honest = json.loads((distances / f"distances-{card.stem}.json").read_text(encoding="utf-8"))
    dishonest = json.loads((distances / f"dishonest-{card.stem}.json").read_text(encoding="utf-8"))
    spread = max(honest["honest"])
    closest = min(dishonest["closest"])
    tolerance = derive(spread, closest)
    return (
        "\n[challenge]\n"
        f"tolerance = {tolerance!r}\n"
        f"spread = {round(spread, 6)!r}\n"
        f"nonces = {len(honest['honest'])}\n"
        f'measured_on = ["{honest["x86"]}", "{honest["cpu"]} (qemu-user)"]\n'
        f'derivation = "max({MARGIN:g} x spread, {FLOOR:g}); closest dishonest answer (25% of pixels '
        f'replaced, or a different model) at {closest:.4f}, make test-arm64"\n'
    )


def measured_table(run: Path, model: str, eval_set: str, fp32_run: Path | None = None) -> tuple[str, str]:
    """The [[measured]] entry of ``run``'s CPU; fp32 answers from ``fp32_run`` when ``run`` has none
    (fp32 under qemu takes seconds per image; fp32 agrees across CPUs to ~1e-6)."""
    cpu = json.loads((run / "cpu.json").read_text(encoding="utf-8"))["name"]
    fp32 = np.load((run if (run / "fp32.npz").exists() or fp32_run is None else fp32_run) / "fp32.npz")[
        "logits"
    ]
    int8 = np.load(run / f"{model}.npz")["logits"]
    a = q.agreement(fp32, int8, apply_softmax=True)
    lo, hi = a.top1_confident_ci95
    text = (
        "\n[[measured]]\n"
        f'cpu = "{cpu} (qemu-user)"\n'
        f'eval_set = "{eval_set}"\n'
        f"images = {a.holdout}\n"
        f"confident = {a.confident}\n"
        f"top1_confident = {round(a.top1_confident or 0.0, 4)!r}\n"
        f"top1_confident_ci95 = [{round(lo, 4)!r}, {round(hi, 4)!r}]\n"
        f"top1_all = {round(a.top1_all, 4)!r}\n"
        f"top5_contains = {round(a.top5_contains, 4)!r}\n"
    )
    return cpu, text


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("card", type=Path)
    parser.add_argument("--distances", type=Path, required=True)
    parser.add_argument("--run", type=Path, default=None)
    parser.add_argument("--model", default="shipped")
    parser.add_argument("--fp32-run", type=Path, default=None, help="run with the fp32 answers (same images)")
    parser.add_argument("--eval-set", default=None, help="describe the images of --run")
    args = parser.parse_args()
    text = _strip_table(args.card.read_text(encoding="utf-8"), "[challenge]")
    if args.run is not None:
        loaded = load_card(args.card)
        eval_set = args.eval_set or (loaded.card.measured[0].eval_set if loaded.card.measured else "eval set")
        cpu, table = measured_table(args.run, args.model, eval_set, args.fp32_run)
        blocks = re.split(r"\n(?=\[\[measured\]\]\n)", text)
        text = "\n".join(b for b in blocks if f'cpu = "{cpu} (qemu-user)"' not in b).rstrip("\n") + "\n"
        text += table
    text += challenge_table(args.card, args.distances)
    args.card.write_text(text, encoding="utf-8")
    load_card(args.card)  # never leave a card that does not load
    print(f"updated {args.card}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
