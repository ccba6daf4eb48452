"""`edgeproof fleet keys|publish|sign|serve` (rollout, status, halt, resume: fleet_rollout.py); docs/fleet.md."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import logging
import signal
import time
from pathlib import Path
from typing import Any

from agent.commands.output import print_json, print_table
from agent.errors import ConfigError

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser(
        "fleet",
        help="operator tooling: keys, publish and co-sign model manifests, serve artifacts, staged rollouts",
        description="The fleet operator's side of model updates: an operator key, `publish` (build, "
        "sign on the operator's chain and publish a retained manifest), `sign` (add one operator's "
        "co-signature to a manifest signing file, k-of-n), `serve` (HTTP artifacts with Range and "
        "ETag), `rollout run` (advance stages, halt on failures), `status`, `halt` and `resume`. "
        "See docs/fleet.md.",
    )
    group.set_defaults(group_parser=group)
    commands = group.add_subparsers(dest="fleet_command", metavar="SUBCOMMAND")
    _register_keys(commands)
    _register_publish(commands)
    _register_sign(commands)
    _register_serve(commands)
    from agent.commands import fleet_rollout

    fleet_rollout.register(commands)


def _register_keys(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser(
        "keys",
        help="create and show the operator key",
        description="The operator key signs manifests: ed25519 in Solana CLI keypair JSON, mode 0600. "
        "Devices trust its base58 public key ([fleet] operator_keys). Back it up offline: a lost key "
        "cannot sign again and a new key must be added to every device.",
    )
    keys.set_defaults(group_parser=keys)
    sub = keys.add_subparsers(dest="fleet_keys_command", metavar="SUBCOMMAND")
    init = sub.add_parser(
        "init",
        help="create a new operator key (never overwrites)",
        description="Write a new operator key with mode 0600. An existing file is refused (key_exists).",
    )
    init.add_argument("--key", required=True, help="operator key file to create")
    init.add_argument("--json", action="store_true", help="print {operator, key} as JSON")
    init.set_defaults(func=run_keys_init)
    show = sub.add_parser(
        "show",
        help="print the operator's public key (what devices list in operator_keys)",
        description="Print the operator key's base58 public key. The key file must have mode 0600.",
    )
    show.add_argument("--key", required=True, help="operator key file")
    show.add_argument("--json", action="store_true", help='print {"operator": ...}')
    show.set_defaults(func=run_keys_show)


def _register_publish(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    publish = commands.add_parser(
        "publish",
        help="build, sign and publish a retained model manifest on a channel",
        description="Build the manifest a device checks (the card's file and sha256 must be the model "
        "artifact's; model id and version are the card's), sign it as the next link of the operator "
        "key's chain (seq and the channel's highest version come from --state, which is written before "
        "publishing), and publish it retained with QoS 1 on {prefix}/fleet/manifest/CHANNEL through "
        "the config's [mqtt] settings. A version at or below the highest this operator published on "
        "the channel, or at or below the channel's retained manifest, is refused (version_reused, "
        "stale_version). --dry-run signs and publishes "
        "nothing: it prints the manifest and, with --devices, which devices each stage reaches. "
        "k-of-n: --out FILE --threshold K writes the signed manifest to a signing file instead (the state "
        "file is written as for a publish); other operators add theirs with `fleet sign FILE`; "
        "--from FILE publishes it once it carries K signatures.",
    )
    publish.add_argument("--card", help="the model card (TOML); required unless --from")
    publish.add_argument("--file", help="the model file the card names; required unless --from")
    publish.add_argument(
        "--url", help="base URL the artifacts are served under (BASE/NAME); required unless --from"
    )
    publish.add_argument("--channel", help="manifest channel (e.g. stable); required unless --from")
    publish.add_argument(
        "--targets",
        default="",
        help="profile:ID,tag:NAME,device:PUBKEY (default: every device on the channel)",
    )
    publish.add_argument("--stages", default="100", help="percent per stage, last 100 (default: %(default)s)")
    publish.add_argument("--stage", type=int, default=0, help="the current stage index (default: 0)")
    publish.add_argument(
        "--abort-failure-rate",
        type=float,
        default=0.2,
        help="failure rate that halts the rollout (recorded for the rollout controller; default: %(default)s)",
    )
    publish.add_argument("--expires", default="7d", help="validity: Ns, Nm, Nh or Nd (default: %(default)s)")
    publish.add_argument("--version", type=int, default=None, help="manifest version (default: highest + 1)")
    publish.add_argument("--key", required=True, help="operator key file")
    publish.add_argument("--state", required=True, help="the operator's state file (chain head, versions)")
    publish.add_argument("--config", default=None, help="agent config whose [mqtt] settings are used")
    publish.add_argument("--devices", default=None, help="with --dry-run: JSON list of {dev, profile, tags}")
    publish.add_argument(
        "--dry-run", action="store_true", help="print what would be published; change nothing"
    )
    publish.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="write the signed manifest to this new signing file for co-signing instead of publishing it",
    )
    publish.add_argument(
        "--threshold",
        type=int,
        default=1,
        help="with --out: distinct operator signatures the manifest needs, the devices' operator_threshold "
        "(default: %(default)s)",
    )
    publish.add_argument(
        "--from",
        dest="from_file",
        default=None,
        metavar="FILE",
        help="publish a signing file that carries its threshold of signatures (with --key, --state, --config)",
    )
    publish.add_argument("--json", action="store_true", help="print the result as JSON")
    publish.set_defaults(func=run_publish)


def _register_sign(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sign = commands.add_parser(
        "sign",
        help="add one operator's signature to a manifest signing file (k-of-n)",
        description="Add KEY's co-signature to the manifest in FILE (written by `fleet publish --out`): "
        "an ed25519 signature over the same signed bytes as the publishing operator's, so every signer "
        "signs the same manifest, seq and expiry. Every signature already in the file is verified first; "
        "a key that already signed is refused (duplicate_signer), as is an eighth co-signature "
        "(too_many_signatures). It prints the signers so far and the threshold K; `fleet publish --from "
        "FILE` publishes it once it has K.",
    )
    sign.add_argument("manifest_file", metavar="MANIFEST_FILE", help="signing file from fleet publish --out")
    sign.add_argument("--key", required=True, help="this operator's key file")
    sign.add_argument("--json", action="store_true", help="print {signers, threshold, ready, ...} as JSON")
    sign.set_defaults(func=run_sign)


def _register_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve release artifacts over HTTP (Range, ETag, HEAD)",
        description="Serve the files in DIR over HTTP/1.1 for development and small fleets: GET and "
        "HEAD, one Range (206, 416), a strong ETag (the file's sha256), Content-Length. A path leaving "
        "DIR is refused (404, path_traversal). Listens on 127.0.0.1 by default; SIGTERM stops it.",
    )
    serve.add_argument("dir", metavar="DIR", help="folder of artifacts")
    serve.add_argument("--port", type=int, required=True, help="TCP port (0: a free one, printed)")
    serve.add_argument("--host", default="127.0.0.1", help="listen address (default: %(default)s)")
    serve.add_argument("--json", action="store_true", help='print {"url": ...} as JSON once listening')
    serve.set_defaults(func=run_serve)


def run_keys_init(args: argparse.Namespace) -> int:
    from agent.fleet.keys import init_operator_key

    keypair = init_operator_key(args.key)
    if args.json:
        print_json({"operator": str(keypair.pubkey()), "key": args.key})
    else:
        print(f"created {args.key} (mode 0600)\noperator: {keypair.pubkey()}\nback this file up offline")
    return 0


def run_keys_show(args: argparse.Namespace) -> int:
    from agent.fleet.keys import load_operator_key

    operator = str(load_operator_key(args.key).pubkey())
    if args.json:
        print_json({"operator": operator})
    else:
        print(operator)
    return 0


def run_publish(args: argparse.Namespace) -> int:
    from agent.fleet.publish import PublishFromRequest, PublishRequest, publish_from_file, publish_manifest

    if args.from_file is not None:
        given = [
            f"--{name.replace('_', '-')}" for name in _BUILD_ONLY if getattr(args, name) != _DEFAULTS[name]
        ]
        if given:
            raise ConfigError(
                f"--from publishes a signing file as it is; {', '.join(given)} cannot change it",
                hint="build a new manifest with fleet publish --out instead",
            )
        result = publish_from_file(
            PublishFromRequest(
                signing_file=Path(args.from_file),
                key=Path(args.key),
                state=Path(args.state),
                config=args.config,
            ),
            now_ms=time.time_ns() // 1_000_000,
        )
        if args.json:
            print_json(result)
        else:
            _print_publish(result)
        return 0
    missing = [f"--{name}" for name in ("card", "file", "url", "channel") if getattr(args, name) is None]
    if missing:
        raise ConfigError(f"fleet publish needs {', '.join(missing)} (or --from FILE)")
    request = PublishRequest(
        card=Path(args.card),
        model=Path(args.file),
        base_url=args.url,
        channel=args.channel,
        targets=args.targets,
        stages=args.stages,
        stage=args.stage,
        abort_failure_rate=args.abort_failure_rate,
        expires=args.expires,
        version=args.version,
        key=Path(args.key),
        state=Path(args.state),
        config=args.config,
        devices=Path(args.devices) if args.devices else None,
        dry_run=args.dry_run,
        out=Path(args.out) if args.out else None,
        threshold=args.threshold,
    )
    result = publish_manifest(request, now_ms=time.time_ns() // 1_000_000)
    if args.json:
        print_json(result)
        return 0
    _print_publish(result)
    return 0


#: ``fleet publish`` options that build a manifest (so --from, which publishes one as it is, refuses them).
_BUILD_ONLY = (
    "card",
    "file",
    "url",
    "channel",
    "targets",
    "stages",
    "stage",
    "expires",
    "version",
    "devices",
    "dry_run",
    "out",
    "threshold",
)
_DEFAULTS: dict[str, Any] = {
    "card": None,
    "file": None,
    "url": None,
    "channel": None,
    "targets": "",
    "stages": "100",
    "stage": 0,
    "expires": "7d",
    "version": None,
    "devices": None,
    "dry_run": False,
    "out": None,
    "threshold": 1,
}


def run_sign(args: argparse.Namespace) -> int:
    from agent.fleet.keys import load_operator_key
    from agent.fleet.signing import cosign_file

    path = Path(args.manifest_file)
    keypair = load_operator_key(args.key)
    summary = cosign_file(path, keypair, now_ms=time.time_ns() // 1_000_000).summary(path)
    summary["signed_by"] = str(keypair.pubkey())
    if args.json:
        print_json(summary)
        return 0
    print(
        f"signed {summary['model_id']} {summary['model_version']} version {summary['version']} on "
        f"{summary['channel']!r} as {summary['signed_by']}: {len(summary['signers'])} of {summary['threshold']} "
        "signatures"
    )
    for signer in summary["signers"]:
        print(f"  {signer}")
    if summary["ready"]:
        print(f"ready: edgeproof fleet publish --from {path} --key KEY --state STATE --config CONFIG")
    return 0


def _print_publish(result: dict[str, Any]) -> None:
    manifest = result["manifest"]
    if "out" in result:
        print(
            f"wrote {manifest['model_id']} {manifest['model_version']} version {manifest['version']} on "
            f"{result['topic']} to {result['out']} for signing, operator {result['operator']} seq {result['seq']}: "
            f"{len(result['signers'])} of {result['threshold']} signatures"
        )
        return
    verb = "would publish" if result["dry_run"] else "published"
    print(
        f"{verb} {manifest['model_id']} {manifest['model_version']} as version {manifest['version']} on "
        f"{result['topic']} (retained, QoS 1), operator {result['operator']} seq {result['seq']}"
    )
    rows = [(a["name"], a["length"], a["sha256"][:16], a["url"]) for a in manifest["artifacts"]]
    print_table("artifacts", ("name", "bytes", "sha256", "url"), rows)
    for stage in result.get("reach", []):
        mark = " (current)" if stage["current"] else ""
        print(
            f"stage {stage['stage']}{mark}: {stage['bp'] / 100:g}% -> {len(stage['devices'])} of {stage['targeted']} targeted devices"
        )
        for dev in stage["devices"]:
            print(f"  {dev}")


def run_serve(args: argparse.Namespace) -> int:
    from agent.fleet.serve import make_server

    root = Path(args.dir)
    if not root.is_dir():
        raise ConfigError(f"{root} is not a folder")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port} is not a TCP port")
    try:
        ipaddress.ip_address(args.host)
    except ValueError as exc:
        raise ConfigError(f"--host {args.host!r} is not an IP address") from exc
    try:
        server = make_server(root, args.host, args.port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {exc}") from exc
    url = f"http://{args.host}:{server.server_port}/"
    if args.json:
        # One line, so a supervising script can read it before the server's first request.
        print(json.dumps({"url": url, "dir": str(server.root)}, sort_keys=True), flush=True)
    else:
        print(f"serving {server.root} at {url}", flush=True)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever(poll_interval=0.2)
    server.server_close()
    log.info("fleet_serve_stopped", extra={"url": url, "refused": dict(server.refusals)})
    return 0
