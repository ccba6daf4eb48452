"""`edgeproof demo` (what `make demo` runs): the whole network on one machine, on embedded defaults.

Mosquitto, a local Solana ledger (`chain localnet`) with the reward mint (`chain bootstrap`), a
coordinator on SQLite, and three agents on generated clips (two EfficientNet, one BlazeFace),
enrolled with their owners; 5 s slots and 60 s epochs.  While a live table shows the devices,
their verdicts, challenges, the rollout stage and the owners' balances, the operator rolls a new
model version out in two stages (`fleet keys init`, `fleet serve`, `fleet publish`), the
coordinator challenges every device, and one epoch is settled (`rewards settle`).  Then it prints
the uptime audit and each owner's balance on the ledger, and writes the uptime plot, report.html
(the dashboard's numbers, frozen) and every process's log into the output folder it names.
Everything it started is stopped by its pid, also on Ctrl-C and on failure; a failed step is
named and the exit code is non-zero.

`edgeproof demo --device-only` is the earlier one-device demo: the shipped models on a clip,
then one daemon against Mosquitto and an independent verifier of everything it sent.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType

from agent.commands.output import print_json
from agent.errors import ConfigError, EdgeproofError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser(
        "demo",
        help="the whole network on one machine: devices, coordinator, rollout, rewards (what `make demo` runs)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: a new edgeproof-demo-* folder in /tmp)",
    )
    demo.add_argument(
        "--epoch-s",
        type=int,
        default=60,
        help="epoch length in seconds, 12 slots each (a multiple of 3, 12..600; default: %(default)s)",
    )
    demo.add_argument("--json", action="store_true", help="print the final figures as one JSON document")
    demo.add_argument("--device-only", action="store_true", help="the one-device demo (models, one daemon)")
    demo.add_argument(
        "--seconds",
        type=float,
        default=16.0,
        help="--device-only: how long the daemon runs (default: %(default)s)",
    )
    demo.add_argument(
        "--window", type=int, default=5, help="--device-only: proof window in seconds (default: %(default)s)"
    )
    demo.add_argument(
        "--no-network", action="store_true", help="--device-only: only run the models on the clip"
    )
    demo.add_argument("--workdir", type=Path, default=None, help="--device-only: keep files here")
    demo.set_defaults(func=run_demo)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_demo(args: argparse.Namespace) -> int:
    if args.device_only:
        return run_device_only(args)
    from agent.demo.live import LiveTable
    from agent.demo.network import check_epoch_s
    from agent.demo.report import print_final
    from agent.demo.run import Demo

    timing = check_epoch_s(args.epoch_s)
    if args.out is not None and args.out.exists() and any(args.out.iterdir()):
        raise ConfigError(f"--out {args.out} is not empty", hint="give a new or empty folder")
    out = args.out or Path(tempfile.mkdtemp(prefix="edgeproof-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    out = out.resolve()
    signal.signal(signal.SIGTERM, _interrupt)  # stop the children as on Ctrl-C
    live = LiveTable(sys.stderr if args.json else sys.stdout)
    live.out.write(f"edgeproof demo: output folder {out}\n")
    demo = Demo(out, live, timing)
    try:
        result = demo.run()
    except EdgeproofError:
        print_final(demo.result)  # the steps so far, the failed one last
        raise
    if args.json:
        print_json(result.as_json())
    else:
        print_final(result)
    return 0


def run_device_only(args: argparse.Namespace) -> int:
    from agent.demo.device_only import print_report, run_models, run_network
    from agent.localnet.clip import make_clip

    with tempfile.TemporaryDirectory(prefix="edgeproof-demo-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        clip = workdir / "demo-clip.avi"
        clip_frames = make_clip(clip)
        models = run_models(clip)
        network = None if args.no_network else run_network(workdir, clip, args.seconds, args.window)
        report = {"clip": {"path": str(clip), "frames": clip_frames}, "models": models, "network": network}
        if args.json:
            print_json(report)
        else:
            print_report(report)
    if network is not None and not (network["all_valid"] and network["challenge_answer_matches"]):
        return 1
    return 0
