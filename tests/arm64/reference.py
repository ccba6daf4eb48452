"""The x86 side of `make test-arm64`: what the aarch64 run must reproduce, written as JSON.

    python tests/arm64/reference.py OUTDIR [--nonces 64]

For every shipped card (models/*.toml): the challenge sketches of ``--nonces`` nonces computed by
:func:`agent.challenge_run.expected_sketch` (the coordinator's reference execution) on this CPU,
and the decoded result of each sample photo (models/samples), in OUTDIR/reference.json; and,
for the dishonest side, a *different model* per card (OUTDIR/different-<card>.onnx|tflite: the
same file with one weight tensor changed, see tests/support/different_models.py), written here because the
arm64 root has no onnx package.  tests/arm64/test_cross_arch.py,
inside the arm64 root, recomputes them there and compares.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from agent.challenge_run import expected_sketch  # noqa: E402
from agent.inference.cpu_class import detect  # noqa: E402
from tests.support.cross_arch import card_paths, decode_samples, nonces, open_pipeline  # noqa: E402
from tests.support.different_models import write_different  # noqa: E402


def reference(nonce_count: int) -> dict[str, Any]:
    cpu = detect()
    cards: dict[str, Any] = {}
    for path in card_paths():
        pipeline = open_pipeline(path)
        sketches = [expected_sketch(pipeline, nonce)[0] for nonce in nonces(nonce_count)]
        cards[path.name] = {
            "sha256": pipeline.loaded.card.sha256,
            "sketches": sketches,
            "samples": decode_samples(pipeline),
        }
    return {"cpu": cpu.name, "features": list(cpu.features), "nonces": nonces(nonce_count), "cards": cards}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--nonces", type=int, default=64)
    args = parser.parse_args()
    args.outdir.mkdir(parents=True, exist_ok=True)
    data = reference(args.nonces)
    text = json.dumps(data, sort_keys=True)
    out = args.outdir / "reference.json"
    out.write_text(text, encoding="utf-8")
    for path in card_paths():
        write_different(path, args.outdir)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    print(
        f"x86 reference: {len(data['cards'])} cards, {args.nonces} nonces, on {data['cpu']} -> {out} ({digest})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
