"""fp32 vs the shipped int8 EfficientNet-Lite0: latency ratio, sizes and agreement, measured in one run.

    .venv/bin/python benchmarks/quantization.py [--threads N] [--rounds R] [--holdout 0.5] [--json]

The float model is not committed (18 MB): it is rebuilt into models/build/.cache by
``.venv/bin/python models/build/build_efficientnet.py`` (needs models/build/requirements.txt).
Both models run with the same onnxruntime session options and threads, timed in
interleaved rounds; agreement is measured on the same held-out split of
tests/data/calib that ``edgeproof models quantize`` used (fixed seed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.errors import EdgeproofError  # noqa: E402
from agent.inference import quantize as q  # noqa: E402
from agent.inference.cards import load_card  # noqa: E402
from agent.inference.cpu_class import detect  # noqa: E402

FP32_CARD = ROOT / "models" / "build" / ".cache" / "efficientnet-lite0-fp32.toml"
INT8_CARD = ROOT / "models" / "efficientnet-lite0-int8.toml"
CALIB = ROOT / "tests" / "data" / "calib"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=40, help="interleaved timing rounds")
    parser.add_argument("--per-round", type=int, default=10, help="inferences per model per round")
    parser.add_argument("--holdout", type=float, default=0.5, help="same meaning as in models quantize")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not FP32_CARD.exists():
        sys.stderr.write(
            f"{FP32_CARD.relative_to(ROOT)} is missing: the float model is not committed.\n"
            "Make it with:\n"
            "  .venv/bin/pip install -r models/build/requirements.txt\n"
            "  .venv/bin/python models/build/build_efficientnet.py\n"
        )
        return 2
    try:
        fp32 = load_card(FP32_CARD)
        int8 = load_card(INT8_CARD)
        fp32_bytes = fp32.read_verified_model()
        int8_bytes = int8.read_verified_model()
        _, held_paths = q.split_images(q.list_images(CALIB), args.holdout)
        held = q.load_tensors(held_paths, fp32.card.input, lambda _n: None)
        name = fp32.card.input.name
        s32 = q.session(fp32_bytes, args.threads)
        s8 = q.session(int8_bytes, args.threads)
        figures = q.agreement(
            q.run_all(s32, name, held, lambda _n: None),
            q.run_all(s8, name, held, lambda _n: None),
            apply_softmax=True,
        )
        ms32, ms8 = q.time_pair(s32, s8, name, held, args.rounds, args.per_round)
    except EdgeproofError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    cpu = detect()
    result = {
        "cpu": cpu.name,
        "cpu_features": list(cpu.features),
        "arithmetic": cpu.arithmetic,
        "threads": args.threads,
        "fp32_ms": round(ms32, 3),
        "int8_ms": round(ms8, 3),
        "speedup": round(ms32 / ms8, 3),
        "fp32_bytes": len(fp32_bytes),
        "int8_bytes": len(int8_bytes),
        "holdout": figures.holdout,
        "top1_all": figures.top1_all,
        "confident": figures.confident,
        "top1_confident": figures.top1_confident,
        "top5_contains": figures.top5_contains,
    }
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return 0
    conf = "n/a" if figures.top1_confident is None else f"{figures.top1_confident:.3f}"
    print(
        f"EfficientNet-Lite0 fp32 vs shipped int8 on {cpu.name} ({', '.join(cpu.features) or 'no avx2'}; "
        f"int8 arithmetic {cpu.arithmetic}), {args.threads} threads, {args.rounds}x{args.per_round} runs each"
    )
    print(f"  latency     fp32 {ms32:.2f} ms   int8 {ms8:.2f} ms   ratio {ms32 / ms8:.2f}x")
    print(f"  size        fp32 {len(fp32_bytes) / 1e6:.2f} MB   int8 {len(int8_bytes) / 1e6:.2f} MB")
    print(f"  agreement   {figures.holdout} held-out images of {CALIB.relative_to(ROOT)}")
    print(f"    top-1, all held out                 {figures.top1_all:.3f}")
    print(f"    top-1, fp32 softmax >= 0.5 ({figures.confident:3d})    {conf}")
    print(f"    fp32 top-1 in int8 top-5            {figures.top5_contains:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
