"""`edgeproof proofs verify`: capture files with valid lines, tampering, gaps and garbage."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
from solders.keypair import Keypair

from agent.cli import main
from agent.protocol.chain import ChainSigner
from agent.protocol.topics import Topics
from agent.protocol.vectors import TS, heartbeat_body, proof_body
from tests.support.manifests import manifest_body

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "protocol" / "capture_sample.txt"
A = Keypair.from_seed(bytes([21]) * 32)
B = Keypair.from_seed(bytes([22]) * 32)
COORD = Keypair.from_seed(bytes([23]) * 32)
T = Topics()


def _clean_capture() -> list[str]:
    signer = ChainSigner(A)
    lines = []
    for i in range(3):
        env = signer.next("heartbeat", heartbeat_body(i), TS + i)
        lines.append(f"{T.hb(signer.dev)} {env.wire.decode()}")
    env = signer.next("proof", proof_body(), TS + 10)
    lines.append(env.wire.decode())  # a raw JSON line
    return lines


def _run(tmp_path: Path, lines: list[str], *extra: str) -> tuple[int, str]:
    capture = tmp_path / "capture.txt"
    capture.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return main(["proofs", "verify", str(capture), *extra]), str(capture)


def test_clean_capture_exits_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = _run(tmp_path, _clean_capture())
    out = capsys.readouterr().out
    assert code == 0
    assert f"{A.pubkey()} (device)" in out
    assert "all valid: 4 lines, 1 signers, 4 messages, 4 valid, 0 signer problems, 0 malformed lines" in out


def test_problems_are_named_with_line_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = _clean_capture()
    b = ChainSigner(B)
    envs = [b.next("heartbeat", heartbeat_body(i), TS + i) for i in range(6)]
    lines.append(f"{T.hb(b.dev)} {envs[0].wire.decode()}")  # line 5
    lines.append(f"{T.hb(b.dev)} {envs[1].wire.decode()}")  # line 6
    # envs[2], envs[3] lost -> gap 3-4
    lines.append(f"{T.hb(b.dev)} {envs[4].wire.decode()}")  # line 7
    tampered = envs[5].wire.decode().replace('"uptime_s":3600', '"uptime_s":3601')
    lines.append(f"{T.hb(b.dev)} {tampered}")  # line 8
    lines.append("garbage")  # line 9
    lines.append(f"{T.hb(b.dev)} {envs[1].wire.decode()}")  # line 10: QoS 1 duplicate, fine
    lines.append("")  # blank: skipped
    lines.append('{"v":1,"kind":"heartbeat"')  # line 12: truncated JSON
    code, _ = _run(tmp_path, lines)
    out = capsys.readouterr().out
    assert code == 8
    assert "line 7: chain_gap [" in out and "missing seq 3-4" in out
    assert f"line 8: bad_signature [{str(B.pubkey())[:6]}..{str(B.pubkey())[-4:]}]: heartbeat seq 6: " in out
    assert "line 9: malformed: neither a JSON object nor 'topic payload'" in out
    assert "line 12: malformed: not JSON: Expecting ',' delimiter at line 1 column 26" in out
    assert (
        "PROBLEMS FOUND: 11 lines, 2 signers, 9 messages, 8 valid, 2 signer problems, 2 malformed lines"
        in out
    )


def test_json_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = _run(tmp_path, [*_clean_capture(), "garbage"], "--json")
    report = json.loads(capsys.readouterr().out)
    assert code == 8
    assert report["ok"] is False
    signer = report["signers"][str(A.pubkey())]
    assert signer["messages"] == signer["valid"] == 4
    assert signer["ok"] is True and signer["missing"] == []
    assert signer["kinds"] == {"heartbeat": 3, "proof": 1}
    assert report["malformed"] == [
        {
            "line": 5,
            "reason": "malformed",
            "message": "neither a JSON object nor 'topic payload'",
            "dev": None,
        }
    ]


def test_fork_replay_and_topic_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = _clean_capture()
    fork = ChainSigner(A).next("heartbeat", heartbeat_body(99), TS)  # another seq 1
    lines.append(f"{T.hb(str(A.pubkey()))} {fork.wire.decode()}")
    env = ChainSigner(B).next("heartbeat", heartbeat_body(), TS)
    lines.append(f"{T.proof(str(B.pubkey()))} {env.wire.decode()}")  # heartbeat on the proof topic
    lines.append(f"{T.hb(str(A.pubkey()))} {env.wire.decode()}")  # B's message on A's topic
    code, _ = _run(tmp_path, lines, "--json")
    report = json.loads(capsys.readouterr().out)
    assert code == 8
    reasons = [(p["line"], p["reason"]) for p in report["problems"]]
    assert reasons == [(5, "fork"), (6, "wrong_kind"), (7, "topic")]
    assert report["problems"][0]["message"] == "heartbeat seq 1: seq 1 seen before with a different hash"


def test_coordinator_messages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    coord = ChainSigner(COORD)
    dev = str(A.pubkey())
    lines = []
    for i in range(3):
        challenge = {"device": dev, "nonce": "ab" * 32, "model_sha256": "cd" * 32, "deadline_ms": TS + i}
        env = coord.next("challenge", challenge, TS + i)
        if i != 1:  # the coordinator's chain spans all devices: gaps are expected, not problems
            lines.append(f"{T.device(dev, 'challenge')} {env.wire.decode()}")
    code, _ = _run(tmp_path, lines, "--coordinator", str(COORD.pubkey()))
    out = capsys.readouterr().out
    assert code == 0, out
    code, _ = _run(tmp_path, lines, "--coordinator", str(B.pubkey()), "--json")
    report = json.loads(capsys.readouterr().out)
    assert code == 8
    assert report["problems"][0]["reason"] == "untrusted_coordinator"


def test_manifests_are_checked_against_their_channel_topic(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    operator = ChainSigner(COORD)
    stable = operator.next("manifest", manifest_body(version=1), TS)
    beta = operator.next("manifest", manifest_body(channel="beta", version=2), TS)
    lines = [f"{T.manifest('stable')} {stable.wire.decode()}", f"{T.manifest('stable')} {beta.wire.decode()}"]
    code, _ = _run(tmp_path, lines, "--json")
    report = json.loads(capsys.readouterr().out)
    assert code == 8
    assert [(p["line"], p["reason"], p["message"]) for p in report["problems"]] == [
        (2, "wrong_channel", f"manifest for channel beta published on {T.manifest('stable')}")
    ]
    assert report["signers"][str(COORD.pubkey())]["roles"] == ["operator"]
    code, _ = _run(tmp_path, lines[:1], "--json")
    assert code == 0, capsys.readouterr().out


def test_stdin_and_sample_file(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(SAMPLE.read_bytes())))
    code = main(["proofs", "verify", "-", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 8
    assert [(p["line"], p["reason"]) for p in report["problems"]] == [(9, "bad_signature"), (10, "chain_gap")]
    assert [p["line"] for p in report["malformed"]] == [11]
    assert sum(1 for s in report["signers"].values() if s["ok"]) == 1


def test_invalid_utf8_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capture = tmp_path / "bin.txt"
    capture.write_bytes(b"topic \xff\xfe\n")
    assert main(["proofs", "verify", str(capture), "--json"]) == 8
    report = json.loads(capsys.readouterr().out)
    assert report["malformed"][0]["message"] == "not UTF-8 at byte 6"


def test_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["proofs", "verify", "/nonexistent/capture.txt"]) == 6
    assert "edgeproof: error: /nonexistent/capture.txt: file not found" in capsys.readouterr().err


def test_bare_group_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["proofs"]) == 2
    assert "verify" in capsys.readouterr().err


def test_a_huge_integer_line_is_one_named_problem_not_an_abort(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Any device can post this line; it used to escape parse_json as a bare ValueError and abort
    # the whole audit.  Now it is one malformed line and the rest of the capture is verified.
    lines = _clean_capture()
    hostile = lines[0].replace('"seq":1', '"seq":' + "9" * 5000, 1)
    lines.insert(1, hostile)
    code, _ = _run(tmp_path, lines, "--json")
    report = json.loads(capsys.readouterr().out)
    assert code == 8
    assert report["valid"] == 4
    assert [(p["line"], p["reason"]) for p in report["problems"] + report["malformed"]] == [(2, "malformed")]
