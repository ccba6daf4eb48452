"""`edgeproof infer` and `edgeproof bench`: run a model card locally and measure it.

The inference modules (numpy, OpenCV, the runtimes) are imported when a
command runs, not when the CLI builds its parser: every other command stays
fast, and a problem there cannot break `edgeproof keys` or `config check`.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from agent.commands.output import print_json, print_kv, print_table, progress_bar

if TYPE_CHECKING:
    from agent.inference.backends.base import BackendSettings

BACKEND_KEYS = ("litert", "onnx")  # agent.inference.backends.BACKENDS (checked by a unit test)


def _int_at_least(minimum: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _runtime_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model card (models/*.toml)")
    parser.add_argument("--profile", default="auto", help="firmware profile id (default: detect)")
    parser.add_argument("--backend", choices=BACKEND_KEYS, default=None, help="override the card's backend")
    parser.add_argument(
        "--threads",
        type=_int_at_least(0),
        default=0,
        help="inference threads (default 0: from the profile)",
    )
    parser.add_argument(
        "--providers",
        default="",
        help="comma-separated ONNX execution providers or LiteRT delegates, in order (default: profile)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    infer = sub.add_parser(
        "infer",
        help="run a model on a source and print fps, latency and what it saw",
        description="Run a model card on frames from a source (camera index, video file, RTSP/HTTP URL, "
        "image folder, or synthetic[:WxH[:SEED]]) and report backend, provider, fps, latency percentiles "
        "and the decoder's summary.",
    )
    _runtime_args(infer)
    infer.add_argument("--source", default="synthetic", help="frame source (default: %(default)s)")
    infer.add_argument(
        "--frames", type=_int_at_least(1), default=100, help="frames to process (default: %(default)s)"
    )
    infer.set_defaults(func=run_infer)

    bench = sub.add_parser(
        "bench",
        help="agent path vs bare runtime: throughput ratio and peak RSS",
        description="Measure the bare runtime loop and the agent's inference path (backend wrapper + "
        "per-inference commitments) on the same session, tensors and threads, interleaved; and the peak "
        "RSS of each in a child process.",
    )
    _runtime_args(bench)
    bench.add_argument(
        "--frames", type=_int_at_least(1), default=500, help="frames per loop (default: %(default)s)"
    )
    bench.add_argument("--no-rss", action="store_true", help="skip the child-process memory measurement")
    bench.set_defaults(func=run_bench_cmd)


def _settings(args: argparse.Namespace) -> BackendSettings:
    from agent.inference.runtime import backend_settings, resolve_profile

    profile = resolve_profile(args.profile)
    names = [p.strip() for p in args.providers.split(",") if p.strip()]
    return backend_settings(
        profile, threads=args.threads, onnx_providers=names or None, litert_delegates=names or None
    )


def _stat(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def run_infer(args: argparse.Namespace) -> int:
    from agent.errors import SourceError
    from agent.inference.pipeline import LatencyStats, Pipeline
    from agent.inference.sources import frames, open_source

    pipeline = Pipeline.open(args.model, _settings(args), args.backend)
    source = open_source(args.source)
    latencies = LatencyStats()
    count = 0
    last: list[Any] = []
    start = time.perf_counter()
    try:
        with progress_bar("infer", args.frames, enabled=None if not args.json else False) as bar:
            for frame in frames(source, args.frames):
                result = pipeline.step(frame)
                latencies.add(result.latency_us)
                last = result.predictions
                count += 1
                bar.advance()
    finally:
        source.close()
    elapsed = time.perf_counter() - start
    if count == 0:
        raise SourceError(
            f"source {source.description} delivered no frames",
            hint="is the video empty, or the folder's images unreadable?",
        )
    report: dict[str, Any] = {
        **pipeline.describe(),
        "source": source.description,
        "frames": count,
        "fps": round(count / elapsed, 2) if elapsed > 0 else 0.0,
        "latency_us": latencies.summary(),
        "summary": pipeline.decoder.summary(),
        "last_predictions": [
            {
                "label": p.label,
                "score": round(p.score, 4),
                "box": None if p.box is None else [round(v, 1) for v in p.box],
            }
            for p in last
        ],
    }
    if args.json:
        print_json(report)
        return 0
    lat = report["latency_us"]
    print_kv(
        f"{report['model']} on {report['source']}",
        {
            "backend": f"{report['backend']} ({report['runtime']})",
            "provider": report["provider"],
            "threads": report["threads"],
            "frames": count,
            "fps": report["fps"],
            "latency p50/p95/p99 (ms)": f"{lat['p50'] / 1000:.2f} / {lat['p95'] / 1000:.2f} / {lat['p99'] / 1000:.2f}",
        },
    )
    summary = report["summary"]
    if "counts" in summary:
        rows = sorted(summary["counts"].items(), key=lambda kv: -kv[1])[:10]
        print_table("predictions per label (top 10)", ["label", "count"], rows)
    if "outputs" in summary:
        rows = [
            (
                o["name"],
                o["shape"],
                o["dtype"],
                _stat(o["min"]),
                _stat(o["max"]),
                _stat(o["mean"]),
                _stat(o["std"]),
                o["nonfinite"],
            )
            for o in summary["outputs"]
        ]
        print_table("outputs", ["name", "shape", "dtype", "min", "max", "mean", "std", "non-finite"], rows)
    return 0


def run_bench_cmd(args: argparse.Namespace) -> int:
    from agent.device.bench import run_bench

    settings = _settings(args)
    with progress_bar("bench", args.frames, enabled=None if not args.json else False) as bar:
        result = run_bench(args.model, settings, args.frames, rss=not args.no_rss, progress=bar)
    data = result.to_json()
    if args.json:
        print_json(data)
    else:
        print_kv(f"bench {result.model}", data)
    return 0
