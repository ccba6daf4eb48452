"""Agent inference path vs the bare runtime, for every shipped model, measured in one run.

    .venv/bin/python benchmarks/inference_overhead.py [--frames N] [--threads T] [--json]

For each card in models/ this runs what ``edgeproof bench`` runs (agent/device/bench.py):
the bare loop (plain ``session.run`` / ``invoke``) and the agent path (backend wrapper +
per-inference commitments on the daemon's hashing thread) in adjacent blocks on the same
session, tensors and threads; then the peak RSS (VmHWM) of a bare-runtime child and of an
agent child.  It prints the throughput ratio (median of block pairs, p10, ratio of totals)
and the RSS delta against issue 2's bars (ratio >= 0.95, delta <= 40 MB).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.device.bench import run_bench  # noqa: E402
from agent.errors import EdgeproofError  # noqa: E402
from agent.inference.runtime import backend_settings, resolve_profile  # noqa: E402

RATIO_BAR = 0.95
RSS_BAR_MB = 40.0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=3000, help="frames per loop and model (default 3000)")
    parser.add_argument("--threads", type=int, default=0, help="inference threads (default: the profile's)")
    parser.add_argument("--json", action="store_true", help="one JSON object per model, in a list")
    args = parser.parse_args()
    profile = resolve_profile("auto")
    results = []
    try:
        for card in sorted((ROOT / "models").glob("*.toml")):
            result = run_bench(str(card), backend_settings(profile, threads=args.threads), args.frames)
            row = result.to_json()
            row["profile"] = profile.id
            row["ratio_ok"] = result.ratio >= RATIO_BAR
            row["rss_ok"] = result.rss_delta_mb is not None and result.rss_delta_mb <= RSS_BAR_MB
            results.append(row)
    except EdgeproofError as exc:
        sys.stderr.write(f"inference_overhead: {exc}\n")
        return 2
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(
        f"profile {profile.id}, {args.frames} frames per loop; bars: ratio >= {RATIO_BAR}, RSS +{RSS_BAR_MB:.0f} MB"
    )
    header = (
        "model",
        "backend",
        "thr",
        "bare fps",
        "agent fps",
        "ratio",
        "p10",
        "totals",
        "bare MB",
        "agent MB",
        "+MB",
    )
    print("  ".join(f"{h:>10}" for h in header))
    for r in results:
        cells = (
            r["model"][:10], r["backend"], r["threads"], r["bare_fps"], r["agent_fps"], r["ratio"],
            r["ratio_p10"], r["ratio_of_totals"], r["bare_peak_rss_mb"], r["agent_peak_rss_mb"], r["rss_delta_mb"],
            r["anon_delta_mb"], r["file_delta_mb"],
        )  # fmt: skip
        print("  ".join(f"{c!s:>10}" for c in cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
