"""The int8 recipe sweep behind docs/models.md: quantize variants, run them on a CPU, compare CPUs.

    # 1. on the build machine (needs the agent venv with onnx + sympy; fp32 from build_efficientnet.py)
    .venv/bin/python models/build/variants.py quantize
    # 2. on every CPU class (x86 here, aarch64 in the arm64 root): logits on the eval set + sketches
    .venv/bin/python models/build/variants.py run --out models/build/.cache/runs/x86_64-avx2
    # 3. the table: agreement with fp32 (Wilson 95% interval), top-5, cross-CPU sketch distance
    .venv/bin/python models/build/variants.py table models/build/.cache/runs/*

Calibration: all of tests/data/calib (skimage crops).  Evaluation: models/build/.cache/eval
(make_eval.py, OpenCV sample photos from Debian's opencv-doc), so the two never share a photo.
The fp32 reference for agreement is the fp32 model run on the same CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from agent.challenge_run import challenge_tensor  # noqa: E402
from agent.inference import quantize as q  # noqa: E402
from agent.inference.cards import load_card  # noqa: E402
from agent.inference.cpu_class import detect  # noqa: E402
from agent.protocol.challenge import output_sketch, sketch_distance  # noqa: E402

CACHE = HERE / ".cache"
FP32_CARD = CACHE / "efficientnet-lite0-fp32.toml"
VARIANTS = CACHE / "variants"
EVAL = CACHE / "eval"
CALIB = ROOT / "tests" / "data" / "calib"
NONCE_COUNT = 64

FIRST_CONV = "/_conv_stem/Conv"
LAST_GEMM = "/_fc/Gemm"

RECIPES: dict[str, q.Recipe] = {
    "qdq-u8s8-minmax": q.Recipe(),  # the old shipped recipe
    "qdq-u8s8-reduce": q.Recipe(reduce_range=True),
    "qdq-u8u8-minmax": q.Recipe(weight_type="uint8"),
    "qdq-u8s8-reduce-float-ends": q.Recipe(reduce_range=True, exclude_nodes=(FIRST_CONV, LAST_GEMM)),
    "qop-u8s8-reduce": q.Recipe(quant_format="qoperator", reduce_range=True),
    "qdq-u8s8-reduce-percentile": q.Recipe(reduce_range=True, calibrate_method="percentile"),
}


def nonces(count: int = NONCE_COUNT) -> list[str]:
    import hashlib

    return [hashlib.sha256(f"edgeproof-variant-nonce-{i}".encode()).hexdigest() for i in range(count)]


def cmd_quantize(args: argparse.Namespace) -> int:
    loaded = load_card(FP32_CARD)
    fp32 = loaded.verify_model()
    spec = loaded.card.input
    calib = q.load_tensors(q.list_images(CALIB), spec, lambda _n: None)
    VARIANTS.mkdir(parents=True, exist_ok=True)
    for name, recipe in RECIPES.items():
        if args.only and name not in args.only:
            continue
        out = VARIANTS / f"{name}.onnx"
        start = time.monotonic()
        q.quantize_file(fp32, out, spec.name, calib, recipe)
        (VARIANTS / f"{name}.json").write_text(json.dumps(asdict(recipe), indent=1), encoding="utf-8")
        print(f"{name}: {out.stat().st_size} bytes, {time.monotonic() - start:.0f} s", flush=True)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    loaded = load_card(FP32_CARD)
    spec = loaded.card.input
    images = q.list_images(args.eval)[:: args.stride][: args.limit or None]
    tensors = q.load_tensors(images, spec, lambda _n: None)
    models = {"fp32": loaded.model_path} | {p.stem: p for p in sorted(VARIANTS.glob("*.onnx"))}
    if args.no_fp32:  # fp32 under qemu is slow: the table then takes another CPU's fp32 answers
        del models["fp32"]
    if args.only is not None:
        models = {k: v for k, v in models.items() if k in args.only or k == "fp32"}
    if args.shipped is not None:
        models["shipped"] = args.shipped
    args.out.mkdir(parents=True, exist_ok=True)
    cpu = detect()
    (args.out / "cpu.json").write_text(
        json.dumps(
            {"name": cpu.name, "machine": cpu.machine, "features": list(cpu.features), "stride": args.stride}
        ),
        encoding="utf-8",
    )
    for name, path in models.items():
        start = time.monotonic()
        sess = q.session(path, args.threads)
        logits = q.run_all(sess, spec.name, tensors, lambda _n: None).astype(np.float32)
        sketches = []
        for nonce in nonces(args.nonces):
            out = sess.run(None, {spec.name: challenge_tensor(spec, nonce)})
            sketches.append(output_sketch(nonce, [np.asarray(o, np.float64) for o in out]))
        np.savez_compressed(args.out / f"{name}.npz", logits=logits, sketches=np.asarray(sketches, np.int64))
        print(
            f"{cpu.name} {name}: {len(tensors)} images, {args.nonces} nonces, {time.monotonic() - start:.0f} s",
            flush=True,
        )
    return 0


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    from agent.inference.quantize import wilson_interval

    return wilson_interval(successes, n, z)


def cmd_table(args: argparse.Namespace) -> int:
    runs: dict[str, dict[str, Any]] = {}
    strides: dict[str, int] = {}
    for run in args.runs:
        info = json.loads((run / "cpu.json").read_text(encoding="utf-8"))
        runs[info["name"]] = {p.stem: dict(np.load(p)) for p in run.glob("*.npz")}
        strides[info["name"]] = int(info.get("stride", 1))
    full = next(c for c in runs if "fp32" in runs[c] and strides[c] == 1)
    for cpu, r in runs.items():
        if "fp32" not in r:  # fp32 is the same on every CPU to ~1e-6 (docs/models.md)
            r["fp32"] = {"logits": runs[full]["fp32"]["logits"][:: strides[cpu]], "borrowed": True}
    speeds = {}
    if args.speed and args.speed.exists():
        speeds = json.loads(args.speed.read_text(encoding="utf-8"))
    names = sorted({n for r in runs.values() for n in r if n != "fp32"})
    cpus = list(runs)
    header = "| variant | " + " | ".join(f"{c}: confident top-1 [95% CI] | {c}: top-5" for c in cpus)
    header += " | x86 speed vs fp32 | sketch distance " + " vs ".join(cpus) + " (max / median) |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name in names:
        cells = [name]
        for cpu in cpus:
            r = runs[cpu]
            if name not in r:
                cells += ["-", "-"]
                continue
            fig = q.agreement(r["fp32"]["logits"], r[name]["logits"], apply_softmax=True)
            hits = round((fig.top1_confident or 0.0) * fig.confident)
            lo, hi = wilson(hits, fig.confident)
            cells.append(
                f"{hits}/{fig.confident} = {fig.top1_confident * 100:.1f}% [{lo * 100:.1f}, {hi * 100:.1f}]"
            )
            cells.append(f"{fig.top5_contains * 100:.1f}% (all top-1 {fig.top1_all * 100:.1f}%)")
        cells.append(f"{speeds[name]:.2f}x" if name in speeds else "-")
        if len(cpus) >= 2 and all(name in runs[c] for c in cpus[:2]):
            a, b = runs[cpus[0]][name]["sketches"], runs[cpus[1]][name]["sketches"]
            d = [sketch_distance(list(x), list(y)) for x, y in zip(a, b, strict=True)]
            cells.append(f"{max(d):.4f} / {float(np.median(d)):.4f} over {len(d)} nonces")
        else:
            cells.append("-")
        print("| " + " | ".join(cells) + " |")
    if len(cpus) >= 2 and not any("borrowed" in runs[c]["fp32"] for c in cpus[:2]):
        a, b = runs[cpus[0]]["fp32"], runs[cpus[1]]["fp32"]
        print(
            f"\nfp32 max |logit difference| {cpus[0]} vs {cpus[1]}: {float(np.abs(a['logits'] - b['logits']).max()):.3g}"
        )
    return 0


def cmd_speed(args: argparse.Namespace) -> int:
    loaded = load_card(FP32_CARD)
    spec = loaded.card.input
    tensors = q.load_tensors(q.list_images(args.eval)[:20], spec, lambda _n: None)
    s32 = q.session(loaded.model_path, args.threads)
    out: dict[str, float] = {}
    for path in sorted(VARIANTS.glob("*.onnx")):
        if args.only and path.stem not in args.only:
            continue
        ms32, ms8 = q.time_pair(s32, q.session(path, args.threads), spec.name, tensors, args.rounds, 5)
        out[path.stem] = ms32 / ms8
        print(f"{path.stem}: fp32 {ms32:.2f} ms, int8 {ms8:.2f} ms, {ms32 / ms8:.2f}x", flush=True)
    args.out.write_text(json.dumps(out, indent=1), encoding="utf-8")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("quantize")
    p.add_argument("--only", nargs="*")
    p.set_defaults(func=cmd_quantize)
    p = sub.add_parser("run")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--eval", type=Path, default=EVAL)
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--stride", type=int, default=1, help="every N-th eval image (a spread-out subset)")
    p.add_argument("--nonces", type=int, default=NONCE_COUNT)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", nargs="*")
    p.add_argument("--no-fp32", action="store_true", help="skip fp32 (table uses another run's)")
    p.add_argument("--shipped", type=Path, default=None, help="also run this model file, as 'shipped'")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("speed")
    p.add_argument("--out", type=Path, default=CACHE / "speed.json")
    p.add_argument("--eval", type=Path, default=EVAL)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", nargs="*")
    p.set_defaults(func=cmd_speed)
    p = sub.add_parser("table")
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument("--speed", type=Path, default=CACHE / "speed.json")
    p.set_defaults(func=cmd_table)
    args = parser.parse_args()
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
