"""The device's model store: install, activate, commit, rollback, pruning and a pointer that survives a crash."""

import json

import pytest

from agent.device.model_store import Active, ModelStore, Release, release_key
from agent.errors import DeployError, StorageError
from agent.protocol.messages import Manifest
from tests.support.manifests import manifest_body

NOW = 1_800_000_000_000


def release(n: int) -> Release:
    sha = f"{n:02x}" * 32
    version = f"1.{n}.0"
    return Release(release_key("tiny", version, sha), "tiny", version, sha, "model.toml", "stable", n)


A, B, C, D = (release(n) for n in (1, 2, 3, 4))


def new_store(root) -> ModelStore:
    return ModelStore(root, clock_ms=lambda: NOW)


def install(store: ModelStore, rel: Release) -> None:
    staging = store.staging_dir(rel)
    (staging / "model.toml").write_text(f'id = "tiny"\nversion = "{rel.model_version}"\n', encoding="utf-8")
    (staging / "model.onnx").write_bytes(rel.model_sha256.encode())
    store.install(rel)


def contents(root) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def test_release_key_and_paths(tmp_path):
    store = new_store(tmp_path)
    assert A.key == "tiny-1.1.0-010101010101"
    assert store.release_dir(A) == tmp_path / A.key
    assert store.card_path(A) == tmp_path / A.key / "model.toml"
    assert store.staging_dir(A) == tmp_path / ".staging" / A.key
    assert (tmp_path / ".staging" / A.key).is_dir()
    assert not store.is_installed(A)


def test_install_moves_staging_into_place_and_is_idempotent(tmp_path):
    store = new_store(tmp_path)
    install(store, A)
    assert store.is_installed(A)
    assert sorted(p.name for p in store.release_dir(A).iterdir()) == ["model.onnx", "model.toml"]
    assert list((tmp_path / ".staging").iterdir()) == []
    # installing again: nothing changes, and a staging folder made meanwhile is removed
    (store.staging_dir(A) / "model.toml").write_text("other", encoding="utf-8")
    assert store.install(A) == tmp_path / A.key
    assert store.card_path(A).read_text(encoding="utf-8") == 'id = "tiny"\nversion = "1.1.0"\n'
    assert list((tmp_path / ".staging").iterdir()) == []


def test_install_needs_a_staged_card(tmp_path):
    store = new_store(tmp_path)
    (store.staging_dir(A) / "model.onnx").write_bytes(b"x")
    with pytest.raises(DeployError) as info:
        store.install(A)
    assert info.value.reason == "install_failed"
    assert info.value.message == (
        f"cannot install release {A.key}: card model.toml is not in {tmp_path / '.staging' / A.key}"
    )
    assert not store.is_installed(A)


def test_activate_commit_and_previous(tmp_path):
    store = new_store(tmp_path)
    assert store.active() is None
    install(store, A)
    assert store.activate(A) == Active(A, "trial", None, NOW)
    assert store.commit() == Active(A, "committed", None, NOW)
    install(store, B)
    assert store.activate(B) == Active(B, "trial", A, NOW)  # A passed its trial: B's fallback
    assert store.commit() == Active(B, "committed", A, NOW)
    assert contents(tmp_path) == sorted([".staging", "active.json", A.key, B.key])


def test_pointer_file_is_json_and_survives_a_restart(tmp_path):
    store = new_store(tmp_path)
    install(store, A)
    store.activate(A)
    store.commit()
    install(store, B)
    active = store.activate(B)
    data = json.loads((tmp_path / "active.json").read_text(encoding="utf-8"))
    assert data == {"current": B.to_dict(), "state": "trial", "previous": A.to_dict(), "activated_ms": NOW}
    assert not (tmp_path / ".active.json.tmp").exists()
    assert ModelStore(tmp_path).active() == active  # a new process reads the same state


def test_a_release_that_never_committed_is_not_kept_as_previous(tmp_path):
    store = new_store(tmp_path)
    for rel in (A, B, C):
        install(store, rel)
    store.activate(A)
    store.commit()
    store.activate(B)  # on trial
    assert store.activate(C) == Active(C, "trial", A, NOW)  # B never passed: A stays the fallback
    store.commit()
    assert contents(tmp_path) == sorted([".staging", "active.json", A.key, C.key])


def test_commit_prunes_all_but_current_and_previous(tmp_path):
    store = new_store(tmp_path)
    for rel in (A, B, C):
        install(store, rel)
        store.activate(rel)
        store.commit()
    (tmp_path / "stray-folder").mkdir()
    (tmp_path / ".staging" / "in-progress").mkdir()
    store.commit()  # committing again only prunes
    assert contents(tmp_path) == sorted([".staging", "active.json", B.key, C.key])
    assert contents(tmp_path / ".staging") == ["in-progress"]


def test_commit_keeps_a_release_installed_during_the_trial(tmp_path):
    store = new_store(tmp_path)
    for rel in (A, B):
        install(store, rel)
        store.activate(rel)
    install(store, C)  # prepared (downloaded, smoke-tested) while B is on trial
    store.commit()
    assert store.is_installed(C)
    assert store.activate(C) == Active(C, "trial", B, NOW)
    store.commit()
    assert contents(tmp_path) == sorted([".staging", "active.json", B.key, C.key])
    # after a restart, a release installed but never activated is pruned
    install(store, D)
    new_store(tmp_path).commit()
    assert not store.is_installed(D)


def test_rollback_to_the_previous_release(tmp_path):
    clock = iter([NOW, NOW + 1, NOW + 2])
    store = ModelStore(tmp_path, clock_ms=lambda: next(clock))
    for rel in (A, B):
        install(store, rel)
    store.activate(A)
    store.commit()
    store.activate(B)
    assert store.rollback() == Active(A, "committed", None, NOW + 2)
    assert not store.is_installed(B)  # the failed release is deleted
    assert new_store(tmp_path).active() == Active(A, "committed", None, NOW + 2)


def test_rollback_without_previous_removes_the_pointer(tmp_path):
    store = new_store(tmp_path)
    install(store, A)
    store.activate(A)
    assert store.rollback() is None
    assert not (tmp_path / "active.json").exists()
    assert not store.is_installed(A)
    assert store.active() is None
    assert store.rollback() is None  # nothing left to roll back


def test_rollback_when_the_previous_folder_is_gone(tmp_path):
    store = new_store(tmp_path)
    for rel in (A, B):
        install(store, rel)
        store.activate(rel)
        store.commit()
    store.activate(B)  # B again: on trial, A is still the fallback
    (tmp_path / A.key / "model.toml").unlink()
    (tmp_path / A.key / "model.onnx").unlink()
    (tmp_path / A.key).rmdir()
    assert store.rollback() is None
    assert store.active() is None


def test_activate_needs_an_installed_release(tmp_path):
    store = new_store(tmp_path)
    with pytest.raises(DeployError) as info:
        store.activate(A)
    assert info.value.reason == "not_installed"
    assert info.value.message == f"release {A.key} is not installed in {tmp_path}"


def test_commit_needs_a_pointer(tmp_path):
    with pytest.raises(DeployError) as info:
        new_store(tmp_path).commit()
    assert info.value.reason == "not_active"
    assert info.value.message == f"nothing to commit: no {tmp_path / 'active.json'}"


def test_a_release_with_an_unsafe_key_is_refused(tmp_path):
    bad = Release("../escape", A.model_id, A.model_version, A.model_sha256, A.card, A.channel, 1)
    with pytest.raises(DeployError) as info:
        new_store(tmp_path).staging_dir(bad)
    assert info.value.reason == "bad_release"
    assert info.value.message == (
        "release '../escape': key '../escape' does not fit the release (expected 'tiny-1.1.0-010101010101')"
    )
    assert not (tmp_path / ".staging").exists()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "{not json",
            "not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        ),
        ("[]", "Input should be a valid dictionary or instance of PointerRecord"),
        (
            json.dumps(
                {"current": A.to_dict(), "state": "trial", "previous": None, "activated_ms": 1, "x": 1}
            ),
            "x: unknown key 'x' (allowed: activated_ms, current, previous, state)",
        ),
        (
            json.dumps({"current": A.to_dict(), "state": "live", "previous": None, "activated_ms": 1}),
            "state: Input should be 'trial' or 'committed' (got 'live')",
        ),
        (
            json.dumps(
                {
                    "current": {**A.to_dict(), "key": B.key},
                    "state": "trial",
                    "previous": None,
                    "activated_ms": 1,
                }
            ),
            f"current: key '{B.key}' does not fit the release (expected '{A.key}')",
        ),
        (
            json.dumps(
                {"current": A.to_dict(), "state": "trial", "previous": A.to_dict(), "activated_ms": 1}
            ),
            f"previous and current are the same release '{A.key}'",
        ),
    ],
    ids=["not-json", "not-an-object", "unknown-key", "bad-state", "key-mismatch", "previous-is-current"],
)
def test_corrupt_pointer(tmp_path, text, problem):
    (tmp_path / "active.json").write_text(text, encoding="utf-8")
    store = new_store(tmp_path)
    with pytest.raises(StorageError) as info:
        store.active()
    assert info.value.message == f"{tmp_path / 'active.json'}: {problem}"
    assert info.value.hint == (
        f"the daemon runs its configured model; delete {tmp_path / 'active.json'} to clear this"
    )
    # activating a release replaces the corrupt pointer (there is no fallback to keep)
    install(store, A)
    assert store.activate(A) == Active(A, "trial", None, NOW)
    assert store.active() == Active(A, "trial", None, NOW)


def test_release_from_manifest():
    manifest = Manifest.model_validate(manifest_body())
    assert Release.from_manifest(manifest) == Release(
        key="efficientnet-lite0-int8-1.1.0-abababababab",
        model_id="efficientnet-lite0-int8",
        model_version="1.1.0",
        model_sha256="ab" * 32,
        card="model.toml",
        channel="stable",
        manifest_version=3,
    )


def test_discard_removes_staging_and_an_unused_installed_release(tmp_path):
    store = new_store(tmp_path)
    install(store, A)
    store.activate(A)
    store.commit()
    install(store, B)  # installed, then failed its smoke test
    (store.staging_dir(C) / "model.onnx.part").write_bytes(b"half")  # a download that failed
    store.discard(B)
    store.discard(C)
    assert contents(tmp_path) == [".staging", "active.json", A.key]
    assert list((tmp_path / ".staging").iterdir()) == []
    # Once B is gone from the store's fresh set, a commit does not keep it either (nothing to keep).
    assert store.commit().current == A


def test_discard_never_deletes_the_current_or_previous_release(tmp_path):
    store = new_store(tmp_path)
    for rel in (A, B):
        install(store, rel)
        store.activate(rel)
        store.commit()
    (store.staging_dir(A) / "model.onnx.part").write_bytes(b"x")
    store.discard(A)  # previous
    store.discard(B)  # current
    assert contents(tmp_path) == [".staging", "active.json", A.key, B.key]
    assert list((tmp_path / ".staging").iterdir()) == []


def test_discard_keeps_installed_releases_when_the_pointer_is_unreadable(tmp_path):
    store = new_store(tmp_path)
    install(store, A)
    (tmp_path / "active.json").write_text("{garbage", encoding="utf-8")
    store.discard(A)
    assert store.is_installed(A)


def test_clean_staging_keeps_only_the_named_releases(tmp_path):
    store = new_store(tmp_path)
    (store.staging_dir(A) / "model.onnx.part").write_bytes(b"resume me")
    (store.staging_dir(B) / "model.onnx").write_bytes(b"failed release")
    (tmp_path / ".staging" / "stray.tmp").write_bytes(b"x")
    install(store, C)
    assert store.clean_staging({A.key}) == ["stray.tmp", B.key]
    assert contents(tmp_path / ".staging") == [A.key]
    assert (tmp_path / ".staging" / A.key / "model.onnx.part").read_bytes() == b"resume me"
    assert store.is_installed(C)  # installed releases are not staging
    assert store.clean_staging(set()) == [A.key]
    assert new_store(tmp_path / "nowhere").clean_staging(set()) == []
