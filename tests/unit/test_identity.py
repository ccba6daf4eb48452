import json
import os
import stat

import pytest

from agent.cli import main
from agent.errors import KeyFileError
from agent.identity import device_id, init_keypair, load_keypair

SEED = bytes(range(32))
SEED_ID = "FAe4sisG95oZ42w7buUn5qEE4TAnfTTFPiguZUHmhiF"


def test_init_writes_0600_solana_cli_json(tmp_path):
    path = tmp_path / "dev.json"
    keypair = init_keypair(path, seed=SEED)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    values = json.loads(path.read_text())
    assert len(values) == 64 and all(0 <= v <= 255 for v in values)
    assert device_id(load_keypair(path)) == device_id(keypair) == SEED_ID


def test_init_never_overwrites(tmp_path):
    path = tmp_path / "dev.json"
    init_keypair(path, seed=SEED)
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="already exists; refusing to overwrite a device key"):
        init_keypair(path)
    assert path.read_bytes() == before


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_readable_by_others_is_refused_with_chmod_fix(tmp_path, mode):
    path = tmp_path / "dev.json"
    init_keypair(path, seed=SEED)
    os.chmod(path, mode)
    with pytest.raises(KeyFileError) as info:
        load_keypair(path)
    assert info.value.message == f"key file {path} has mode {mode:04o}: group or others can access it"
    assert info.value.hint == f"chmod 600 {path}"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "is not JSON"),
        ("[1, 2, 3]", "expected a JSON array of 64 integers 0..255"),
        (json.dumps([300] * 64), "expected a JSON array of 64 integers 0..255"),
        (json.dumps({"a": 1}), "expected a JSON array of 64 integers 0..255"),
    ],
)
def test_malformed_key_files(tmp_path, content, message):
    path = tmp_path / "dev.json"
    path.write_text(content)
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError, match=message):
        load_keypair(path)


def test_missing_key_file_names_the_fix(tmp_path):
    with pytest.raises(KeyFileError) as info:
        load_keypair(tmp_path / "nope.json")
    assert "edgeproof keys init --key" in str(info.value)


def test_cli_keys_init_and_show_json(tmp_path, capsys):
    path = tmp_path / "k.json"
    assert main(["keys", "init", "--key", str(path), "--json"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert main(["keys", "show", "--key", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"device_id": created["device_id"]}
    assert main(["keys", "init", "--key", str(path)]) == 3
    assert "refusing to overwrite" in capsys.readouterr().err
    os.chmod(path, 0o644)
    assert main(["keys", "show", "--key", str(path)]) == 3
    err = capsys.readouterr().err
    assert f"fix: chmod 600 {path}" in err and "Traceback" not in err


def test_init_leaves_no_temporary_files_and_ignores_the_umask(tmp_path):
    old = os.umask(0)
    try:
        init_keypair(tmp_path / "keys" / "dev.json", seed=SEED)
    finally:
        os.umask(old)
    assert os.listdir(tmp_path / "keys") == ["dev.json"]
    assert stat.S_IMODE((tmp_path / "keys" / "dev.json").stat().st_mode) == 0o600


def test_a_failed_write_leaves_no_key_behind(tmp_path, monkeypatch):
    import errno

    def full_disk(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    path = tmp_path / "dev.json"
    with pytest.raises(KeyFileError) as info:
        init_keypair(path, seed=SEED)
    assert info.value.message == f"cannot create key file {path}: [Errno 28] No space left on device"
    assert os.listdir(tmp_path) == []  # neither the key nor the temporary file
    monkeypatch.undo()
    init_keypair(path, seed=SEED)  # and the next attempt is not blocked by a half-written file
    assert device_id(load_keypair(path)) == SEED_ID


def test_without_hard_links_the_key_is_still_created_exclusively(tmp_path, monkeypatch):
    import errno

    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "dev.json"
    init_keypair(path, seed=SEED)
    assert device_id(load_keypair(path)) == SEED_ID and os.listdir(tmp_path) == ["dev.json"]
    with pytest.raises(KeyFileError, match="already exists; refusing to overwrite a device key"):
        init_keypair(path)


def test_a_dangling_symlink_is_not_followed_or_replaced(tmp_path):
    path = tmp_path / "dev.json"
    path.symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(KeyFileError, match="already exists"):
        init_keypair(path, seed=SEED)
    assert not (tmp_path / "elsewhere.json").exists()


def test_cli_messages_are_exact(tmp_path, capsys):
    path = tmp_path / "k.json"
    assert main(["keys", "init", "--key", str(path)]) == 0
    out = capsys.readouterr().out
    keypair_id = device_id(load_keypair(path))
    assert out == f"created {path} (mode 0600)\ndevice id: {keypair_id}\n"
    assert main(["keys", "show", "--key", str(path)]) == 0
    assert capsys.readouterr().out == f"{keypair_id}\n"
    assert main(["keys", "init", "--key", str(path)]) == 3
    assert capsys.readouterr().err == (
        f"edgeproof: error: key file {path} already exists; refusing to overwrite a device key\n"
        "  fix: use a different --key path, or move the old key away yourself if you really mean it\n"
    )
    os.chmod(path, 0o640)
    assert main(["keys", "show", "--key", str(path), "--json"]) == 3
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"edgeproof: error: key file {path} has mode 0640: group or others can access it\n"
        f"  fix: chmod 600 {path}\n"
    )
    os.chmod(path, 0o600)
    assert main(["keys", "show", "--key", str(path), "--json"]) == 0
    assert capsys.readouterr().out == f'{{\n  "device_id": "{keypair_id}"\n}}\n'
