"""`edgeproof models ...`: model tooling for fleet operators (quantization)."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from agent.commands.output import print_json, print_table, progress_bar
from agent.errors import ConfigError


def register(subparsers: Any) -> None:
    group = subparsers.add_parser(
        "models",
        help="model tooling: quantize a float model to int8",
        description="Model tooling for fleet operators. Models are described by cards (models/*.toml): "
        "file and sha256, input tensor and preprocessing, outputs and decoder.",
    )
    group.set_defaults(group_parser=group)
    sub = group.add_subparsers(dest="models_command", metavar="SUBCOMMAND")

    q = sub.add_parser(
        "quantize",
        help="ONNX Runtime static int8 quantization, checked against the float model",
        description="Calibrate ONNX Runtime's static int8 quantizer on images from DIR (preprocessed as "
        "the card says), compare int8 with fp32 on images held aside from calibration, print latency, "
        "size and agreement, and write OUT plus a card beside it only when the agreement figure "
        "reaches the threshold.",
    )
    q.add_argument("--card", required=True, type=Path, help="card of the float32 ONNX model")
    q.add_argument("--calib", required=True, type=Path, help="directory of calibration images")
    q.add_argument(
        "--eval",
        dest="eval_dir",
        type=Path,
        default=None,
        help="evaluate on the images of this directory instead of the held-out share of --calib "
        "(keep the two disjoint: different photos, not only different crops)",
    )
    q.add_argument("--out", required=True, type=Path, help="output .onnx file (card written beside it)")
    q.add_argument("--threshold", type=float, default=0.95, help="minimum agreement to accept (default 0.95)")
    q.add_argument(
        "--metric",
        choices=("confident", "all", "top5"),
        default="confident",
        help="agreement figure the threshold applies to: top-1 where fp32 softmax >= 0.5 (default), "
        "top-1 on all held-out images, or fp32 top-1 in int8 top-5; all three are always reported",
    )
    q.add_argument(
        "--holdout",
        type=float,
        default=0.5,
        help="images held aside for evaluation: a fraction in (0, 1) or a count (default 0.5)",
    )
    q.add_argument(
        "--threads", type=int, default=None, help="intra-op threads for both timings (default: cores)"
    )
    q.add_argument("--rounds", type=int, default=20, help="interleaved timing rounds (default 20)")
    q.add_argument(
        "--format",
        dest="quant_format",
        choices=("qdq", "qoperator"),
        default="qdq",
        help="QDQ (QuantizeLinear/DequantizeLinear pairs, default) or QOperator (integer operators)",
    )
    q.add_argument("--per-tensor", action="store_true", help="per-tensor weights (default per-channel)")
    q.add_argument(
        "--no-reduce-range",
        dest="reduce_range",
        action="store_false",
        help="8-bit instead of 7-bit weights; x86 without VNNI then saturates where ARM does not "
        "(the figures and challenge sketches stop holding across CPU classes)",
    )
    q.add_argument(
        "--weight-type",
        choices=("int8", "uint8"),
        default="int8",
        help="weight integer type (default int8; uint8 selects ONNX Runtime's U8U8 kernels)",
    )
    q.add_argument(
        "--activation-type",
        choices=("uint8", "int8"),
        default="uint8",
        help="activation integer type (default uint8)",
    )
    q.add_argument(
        "--calibrate-method",
        choices=("minmax", "entropy", "percentile"),
        default="minmax",
        help="how activation ranges are taken from the calibration images (default: minmax)",
    )
    q.add_argument("--exclude", action="append", default=[], metavar="NODE", help="keep this node in float")
    q.add_argument("--json", action="store_true", help="print the report as JSON")
    q.set_defaults(func=quantize_command)


def _progress_factory(stack: ExitStack, enabled: bool) -> Callable[[str, int], Callable[[int], None]]:
    def factory(description: str, total: int) -> Callable[[int], None]:
        stack.close()
        bar = stack.enter_context(progress_bar(description, total, enabled=enabled))
        return bar.advance

    return factory


def _command_line() -> str:
    return "edgeproof " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def quantize_command(args: argparse.Namespace) -> int:
    from agent.inference.quantize import METRIC_TEXT, Recipe, quantize

    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    if not 0.0 <= args.threshold <= 1.0:
        raise ConfigError(
            f"--threshold must be a fraction between 0 and 1, got {args.threshold}",
            hint="e.g. --threshold 0.95 for 95% agreement",
        )
    if args.rounds < 1:
        raise ConfigError(f"--rounds must be >= 1, got {args.rounds}")
    recipe = Recipe(
        quant_format=args.quant_format,
        per_channel=not args.per_tensor,
        reduce_range=args.reduce_range,
        weight_type=args.weight_type,
        activation_type=args.activation_type,
        calibrate_method=args.calibrate_method,
        exclude_nodes=tuple(args.exclude),
    )
    show = sys.stderr.isatty() and not args.json
    with ExitStack() as stack:
        report = quantize(
            args.card,
            args.calib,
            args.out,
            eval_dir=args.eval_dir,
            threshold=args.threshold,
            holdout=args.holdout,
            metric=args.metric,
            recipe=recipe,
            threads=args.threads,
            rounds=args.rounds,
            produced_by=_command_line(),
            progress=_progress_factory(stack, show),
        )
    if args.json:
        print_json(report.to_dict())
        return 0
    a = report.agreement
    lo, hi = a.top1_confident_ci95
    conf = "n/a" if a.top1_confident is None else f"{a.top1_confident:.3f} (95% CI {lo:.3f}-{hi:.3f})"
    features = ", ".join(report.cpu_features) or "none of avx2/avx512/vnni"
    vnni = "VNNI" if any("vnni" in f for f in report.cpu_features) else "no VNNI"
    rows: list[tuple[str, Any]] = [
        ("measured on", f"{report.cpu} ({vnni}; features: {features})"),
        ("int8 arithmetic", report.arithmetic),
        ("fp32 latency", f"{report.fp32_ms:.2f} ms"),
        ("int8 latency", f"{report.int8_ms:.2f} ms"),
        ("speed-up", f"{report.speedup:.2f}x ({report.threads} threads, same session options)"),
        ("fp32 size", f"{report.fp32_bytes / 1e6:.2f} MB"),
        ("int8 size", f"{report.int8_bytes / 1e6:.2f} MB"),
        ("images", f"{report.calibration_images} calibration, {a.holdout} evaluated ({report.eval_set})"),
        ("top-1 agreement, all held out", f"{a.top1_all:.3f}"),
        (f"top-1 agreement, fp32 softmax >= 0.5 ({a.confident} images)", conf),
        ("fp32 top-1 in int8 top-5", f"{a.top5_contains:.3f}"),
        ("accepted on", f"{METRIC_TEXT[report.metric]} >= {report.threshold:.3f}"),
        ("wrote", f"{report.out} and {report.out_card}"),
    ]
    print_table("edgeproof models quantize", ["figure", "value"], rows)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0
