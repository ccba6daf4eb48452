"""`edgeproof broker credentials`: the password hash, the ACL check and every refusal, by name."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest

from agent.broker.acl import device_coverage, parse_acl
from agent.broker.passwd import hash_password, verify_password
from agent.cli import main
from agent.errors import BrokerCredentialsError
from tests.support.tls_broker import DEPLOY, DEV_A, DEV_B


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["broker", "credentials", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_hash_is_byte_for_byte_what_mosquitto_passwd_writes(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    passwd.touch()
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), "alice", "s3cret pw"], check=True)
    theirs = passwd.read_text().strip().split(":", 1)[1]
    _, seven, iterations, salt, _ = theirs.split("$")
    import base64

    ours = hash_password("s3cret pw", salt=base64.b64decode(salt), iterations=int(iterations))
    assert (seven, iterations, ours) == ("7", "101", theirs)
    assert verify_password(theirs, "s3cret pw") and not verify_password(theirs, "s3cret pw ")
    assert not verify_password("$6$abc$def", "s3cret pw")  # another scheme is not ours to accept
    assert not verify_password("$7$101$!!$!!", "s3cret pw")


def test_a_malformed_device_id_is_refused_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    passwd = tmp_path / "passwd"
    for bad in ("nope", f"{DEV_A}:x", f"{DEV_A}\nroot", DEV_A[:-1] + "0", "1" * 45, ""):
        code, out, err = run(capsys, bad, "--password-file", str(passwd))
        assert (code, out) == (19, "")
        assert err == (
            f"edgeproof: error: refused (bad_device_id): {bad!r} is not a device id (a base58 ed25519 "
            "public key)\n  fix: use the id `edgeproof keys show` prints on the device\n"
        )
    assert not passwd.exists()


def test_an_existing_entry_is_replaced_in_place_comments_and_others_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_text(f"# broker users\ncoordinator:{hash_password('c')}\n{DEV_A}:old\n\n{DEV_A}:older\n")
    passwd.chmod(0o640)
    code, _, err = run(capsys, DEV_A, "--password-file", str(passwd), "--secret-out", str(tmp_path / "s"))
    assert code == 0, err
    lines = passwd.read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == ["# broker users", "coordinator", DEV_A, ""]
    assert verify_password(lines[2].split(":", 1)[1], (tmp_path / "s").read_text().strip())
    assert oct(passwd.stat().st_mode & 0o777) == "0o640"  # the broker's mode is kept
    assert oct((tmp_path / "s").stat().st_mode & 0o777) == "0o600"


def test_a_given_password_is_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    passwd = tmp_path / "passwd"
    cases = {
        "\n": "the password is empty",
        "a" * 257 + "\n": "the password is 257 bytes, more than 256",
        "two\nlines\n": "the password contains a control character (a newline inside it?)",
    }
    for given, message in cases.items():
        monkeypatch.setattr("sys.stdin", io.StringIO(given))
        code, _, err = run(capsys, DEV_A, "--password-file", str(passwd), "--password-stdin")
        assert (code, err) == (19, f"edgeproof: error: refused (bad_password): {message}\n")
    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse\n"))
    code, _, err = run(capsys, DEV_A, "--password-file", str(passwd), "--password-stdin")
    assert code == 0, err
    assert verify_password(passwd.read_text().split(":", 1)[1].strip(), "correct horse")


def test_a_malformed_password_file_is_refused_by_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_text(f"{DEV_B}:{hash_password('b')}\ngarbage without colon\n")
    before = passwd.read_text()
    code, _, err = run(capsys, DEV_A, "--password-file", str(passwd))
    assert code == 19
    assert err.startswith(f"edgeproof: error: refused (passwd_malformed): {passwd}:2: not a 'user:hash' line")
    assert passwd.read_text() == before


def test_the_shipped_acl_covers_exactly_the_device_role() -> None:
    coverage = device_coverage(parse_acl(DEPLOY / "acl"), DEV_A, "edgeproof/v1")
    assert coverage.missing == [] and coverage.excess == []
    assert ("read", "edgeproof/v1/fleet/manifest/#") in coverage.needed
    assert ("write", f"edgeproof/v1/dev/{DEV_A}/proof") in coverage.needed
    # Under another prefix nothing is covered.
    other = device_coverage(parse_acl(DEPLOY / "acl"), DEV_A, "acme/v1")
    assert len(other.missing) == len(other.needed) == 12


def acl_variant(tmp_path: Path, old: str, new: str) -> Path:
    text = (DEPLOY / "acl").read_text()
    assert old in text
    path = tmp_path / "acl"
    path.write_text(text.replace(old, new))
    return path


@pytest.mark.parametrize(
    ("old", "new", "reason", "message"),
    [
        (
            "pattern read edgeproof/v1/beacon\n",
            "",
            "acl_not_covered",
            "does not let {dev} read edgeproof/v1/beacon",
        ),
        (
            "pattern write edgeproof/v1/dev/%u/hb\n",
            "pattern write edgeproof/v1/dev/%u/hb\npattern deny edgeproof/v1/dev/%u/+\n",
            "acl_not_covered",
            "does not let {dev} write edgeproof/v1/dev/{dev}/claim and 9 more",
        ),
        (
            "pattern write edgeproof/v1/dev/%u/hb\n",
            "pattern readwrite edgeproof/v1/dev/%u/#\n",
            "acl_too_broad",
            "lets {dev} write edgeproof/v1/dev/{dev}/challenge and 2 more, which only the coordinator may",
        ),
        (
            "pattern read edgeproof/v1/beacon\n",
            "pattern read edgeproof/v1/beacon\ntopic read edgeproof/v1/dev/+/voucher\n",
            "acl_malformed_none",
            "",
        ),
        (
            "pattern read edgeproof/v1/beacon\n",
            "pattern read edgeproof/v1/beacon\npattern read edgeproof/v1/dev/+/voucher\n",
            "acl_too_broad",
            "lets {dev} read edgeproof/v1/dev/11111111111111111111111111111111/voucher, which only the "
            "coordinator may",
        ),
        ("user operator\n", "users operator\n", "acl_malformed", "unknown ACL line 'users'"),
        (
            "topic read edgeproof/v1/dev/+/status\n",
            "topic read\n",
            "acl_malformed",
            "'topic' without a topic",
        ),
    ],
)
def test_an_acl_that_does_not_fit_the_device_is_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, reason: str, message: str
) -> None:
    acl = acl_variant(tmp_path, old, new)
    passwd = tmp_path / "passwd"
    code, _, err = run(capsys, DEV_A, "--password-file", str(passwd), "--acl", str(acl))
    if reason == "acl_malformed_none":
        # An anonymous-only `topic` line (before any `user`) does not apply to the device.
        assert code == 0, err
        return
    assert code == 19
    assert err.startswith(f"edgeproof: error: refused ({reason}): "), err
    assert message.format(dev=DEV_A) in err
    assert not passwd.exists()  # refused before anything is written


def test_an_incomplete_ca_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = tmp_path / "ca"
    ca.mkdir()
    (ca / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    code, _, err = run(capsys, DEV_A, "--password-file", str(tmp_path / "passwd"), "--ca", str(ca))
    assert code == 19
    assert err.startswith(f"edgeproof: error: refused (ca_unusable): {ca} has ca.crt but not ca.key\n")
    assert not (ca / "ca.key").exists()
    assert not (tmp_path / "passwd").exists()  # refused before the password file is touched


def test_oversized_files_are_refused_before_they_are_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    passwd = tmp_path / "passwd"
    with passwd.open("wb") as handle:
        handle.truncate(17 * 1024 * 1024)  # sparse: nothing is written, the size is what counts
    code, _, err = run(capsys, DEV_A, "--password-file", str(passwd))
    assert (code, err.split(":", 2)[2].strip().split("\n")[0]) == (
        19,
        f"refused (passwd_malformed): {passwd} is {17 * 1024 * 1024} bytes, more than 16777216: not a "
        "password file?",
    )
    acl = tmp_path / "acl"
    with acl.open("wb") as handle:
        handle.truncate(5 * 1024 * 1024)
    code, _, err = run(capsys, DEV_A, "--password-file", str(tmp_path / "p2"), "--acl", str(acl))
    assert code == 19 and err.startswith(f"edgeproof: error: refused (acl_malformed): {acl} is 5242880 bytes")
    missing = tmp_path / "nope"
    code, _, err = run(capsys, DEV_A, "--password-file", str(tmp_path / "p2"), "--acl", str(missing))
    assert code == 19 and err.startswith(
        f"edgeproof: error: refused (acl_malformed): the ACL {missing} cannot be read"
    )
    assert not (tmp_path / "p2").exists()


def test_the_default_acl_is_the_installed_one_when_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent.broker import credentials

    installed = tmp_path / "acl"
    monkeypatch.setattr(credentials, "INSTALLED_ACL", installed)
    assert credentials.default_acl() == credentials.SHIPPED_ACL == DEPLOY / "acl"
    installed.write_text((DEPLOY / "acl").read_text().replace("pattern read edgeproof/v1/beacon\n", ""))
    assert credentials.default_acl() == installed
    with pytest.raises(BrokerCredentialsError) as refused:
        credentials.issue_credentials(DEV_A, password_file=tmp_path / "passwd")
    assert refused.value.reason == "acl_not_covered"
