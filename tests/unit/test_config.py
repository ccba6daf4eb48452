import json
import os

import pytest

from agent.cli import main
from agent.config import load_config
from agent.errors import ConfigError

GOOD = """
[device]
key = "keys/device.json"
state_dir = "/var/lib/edgeproof"

[inference]
source = "0"
max_fps = 2.5

[mqtt]
host = "127.0.0.1"
port = 1883

[proofs]
window_s = 60
"""


def write(tmp_path, text, name="agent.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_config_resolves_relative_paths(tmp_path):
    config = load_config(write(tmp_path, GOOD), env={})
    assert config.device.key == str(tmp_path / "keys/device.json")
    assert config.inference.source == "0"  # camera index, not a path
    assert config.outbox.path == "/var/lib/edgeproof/outbox.sqlite3"
    assert config.inference.max_fps == 2.5


def test_defaults_without_a_file():
    config = load_config(None, env={})
    assert config.proofs.window_s == 60 and config.proofs.heartbeat_s == 30
    assert config.inference.model.endswith("efficientnet-lite0-int8.toml")


def test_unknown_key_names_file_line_and_near_miss(tmp_path):
    path = write(tmp_path, GOOD.replace("port = 1883", "prot = 1883"))
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value) == (
        f"{path}:12: mqtt.prot: unknown key 'prot'; did you mean 'port'?\n  fix: rename 'prot' to 'port'"
    )


def test_unknown_section(tmp_path):
    path = write(tmp_path, GOOD + "\n[infrence]\nthreads = 2\n")
    with pytest.raises(
        ConfigError, match=r"agent.toml:17: infrence: unknown key 'infrence'; did you mean 'inference'\?"
    ):
        load_config(path, env={})


def test_wrong_type_and_range(tmp_path):
    path = write(
        tmp_path, GOOD.replace("window_s = 60", 'window_s = "60"').replace("port = 1883", "port = 70000")
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    text = str(info.value)
    assert "2 problems" in text
    assert f"{path}:12: mqtt.port: Input should be less than or equal to 65535 (got 70000)" in text
    assert f"{path}:15: proofs.window_s: Input should be a valid integer (got '60')" in text


def test_not_toml(tmp_path):
    path = write(tmp_path, "[device\nkey=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path, env={})


def test_env_overrides(tmp_path):
    path = write(tmp_path, GOOD)
    config = load_config(
        path, env={"EDGEPROOF_MQTT__PORT": "8883", "EDGEPROOF_INFERENCE__SOURCE": "synthetic"}
    )
    assert config.mqtt.port == 8883
    assert config.inference.source == "synthetic"


def test_env_values_are_toml_values_else_strings(tmp_path):
    config = load_config(
        write(tmp_path, GOOD),
        env={
            "EDGEPROOF_INFERENCE__ONNX_PROVIDERS": '["CPUExecutionProvider"]',
            "EDGEPROOF_METRICS__ENABLED": "true",
            "EDGEPROOF_DEVICE__OWNER_WALLET": "9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin",
            "EDGEPROOF_PROFILES_DIR": "/elsewhere",  # not a config override: left alone
        },
    )
    assert config.inference.onnx_providers == ["CPUExecutionProvider"]
    assert config.metrics.enabled is True
    assert config.device.owner_wallet == "9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin"


def test_env_override_with_unknown_key_is_refused(tmp_path):
    path = write(tmp_path, GOOD)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"EDGEPROOF_MQTT__PROT": "1"})
    assert str(info.value) == (
        "environment variable EDGEPROOF_MQTT__PROT: mqtt.prot: unknown key 'prot'; did you mean 'port'?\n"
        "  fix: rename 'prot' to 'port'"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"EDGEPROOF_MQT__PORT": "1"})
    assert str(info.value) == (
        "environment variable EDGEPROOF_MQT__PORT: unknown section 'mqt'\n  fix: did you mean EDGEPROOF_MQTT__...?"
    )


def test_env_override_with_bad_value_names_the_variable_not_the_file(tmp_path):
    path = write(tmp_path, GOOD.replace("window_s = 60", "window_s = 1"))
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"EDGEPROOF_MQTT__PORT": "eighty"})
    assert str(info.value) == (
        f"{path}: 2 problems\n"
        f"  {path}:15: proofs.window_s: Input should be greater than or equal to 5 (got 1)\n"
        "  environment variable EDGEPROOF_MQTT__PORT: mqtt.port: Input should be a valid integer (got 'eighty')"
    )
    # An override can also repair a file value.
    assert load_config(path, env={"EDGEPROOF_PROOFS__WINDOW_S": "30"}).proofs.window_s == 30


def test_env_override_with_a_single_underscore_is_refused(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, GOOD), env={"EDGEPROOF_MQTT_PORT": "8883"})
    assert str(info.value) == (
        "environment variable EDGEPROOF_MQTT_PORT: section and key are separated by a double underscore\n"
        "  fix: rename it to EDGEPROOF_MQTT__PORT"
    )


def test_cli_config_check(tmp_path, capsys, monkeypatch):
    for name in [n for n in os.environ if n.startswith("EDGEPROOF_")]:
        monkeypatch.delenv(name)
    good = write(tmp_path, GOOD)
    assert main(["config", "check", str(good)]) == 0
    assert capsys.readouterr().out == f"{good}: ok\n"
    assert main(["config", "check", str(good), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["valid"], doc["file"], doc["config"]["mqtt"]["port"]) == (True, str(good), 1883)
    assert doc["config"]["device"]["key"] == str(tmp_path / "keys/device.json")

    bad = write(tmp_path, GOOD.replace("window_s", "windw_s"), "bad.toml")
    assert main(["config", "check", str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"edgeproof: error: {bad}:15: proofs.windw_s: unknown key 'windw_s'; did you mean 'window_s'?\n"
        "  fix: rename 'windw_s' to 'window_s'\n"
    )
    assert main(["config", "check", str(bad), "--json"]) == 2
    assert json.loads(capsys.readouterr().out) == {
        "valid": False,
        "file": str(bad),
        "error": f"{bad}:15: proofs.windw_s: unknown key 'windw_s'; did you mean 'window_s'?",
        "hint": "rename 'windw_s' to 'window_s'",
    }

    missing = tmp_path / "missing.toml"
    assert main(["config", "check", str(missing)]) == 2
    assert capsys.readouterr().err == f"edgeproof: error: {missing}: file not found\n"

    monkeypatch.setenv("EDGEPROOF_MQTT__PORT", "8883")
    assert main(["config", "check", str(good), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["mqtt"]["port"] == 8883


def test_wallet_and_coordinator_key_must_be_base58_addresses(tmp_path):
    good = "9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin"
    path = write(tmp_path, GOOD + f'\n[coordinator]\npubkey = "{good}"\n')
    config = load_config(path, env={"EDGEPROOF_DEVICE__OWNER_WALLET": good})
    assert (config.device.owner_wallet, config.coordinator.pubkey) == (good, good)
    path = write(tmp_path, GOOD.replace('state_dir = "/var/lib/edgeproof"', 'owner_wallet = "0xdeadbeef"'))
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value) == (
        f"{path}:4: device.owner_wallet: not a base58 Solana address (Invalid Base58 string): '0xdeadbeef'"
    )
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, GOOD), env={"EDGEPROOF_COORDINATOR__PUBKEY": "abc"})
    assert str(info.value) == (
        "environment variable EDGEPROOF_COORDINATOR__PUBKEY: coordinator.pubkey: "
        "not a base58 Solana address (String is the wrong size): 'abc'"
    )


@pytest.mark.parametrize(
    "url", ["rtsp://cam/live", "rtsps://cam.local/live", "rtmp://h/app", "udp://239.0.0.1:5000", "tcp://h:9"]
)
def test_stream_urls_are_not_resolved_as_paths(tmp_path, url):
    path = tmp_path / "agent.toml"
    path.write_text(f'[inference]\nsource = "{url}"\n', encoding="utf-8")
    assert load_config(path, env={}).inference.source == url


def test_fleet_section(tmp_path):
    operator = "9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin"
    text = GOOD + f'\n[fleet]\nchannels = ["stable"]\noperator_keys = ["{operator}"]\ntags = ["lobby"]\n'
    config = load_config(write(tmp_path, text), env={})
    assert (config.fleet.channels, config.fleet.operator_keys, config.fleet.tags) == (
        ["stable"],
        [operator],
        ["lobby"],
    )
    path = write(tmp_path, GOOD + '\n[fleet]\nchannels = ["stable"]\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value) == (
        f"{path}:17: fleet: channels are set but operator_keys is empty: no manifest could be trusted"
    )
    path = write(tmp_path, text.replace('["stable"]', '["Stable/1"]'))
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value) == (
        f"{path}:18: fleet.channels: 'Stable/1' is not a lower-case identifier (a-z, 0-9, '.', '_', '-')"
    )


def test_fleet_download_limits(tmp_path):
    from agent.device.download import DEFAULT_DEADLINE_FLOOR_S, DEFAULT_MIN_RATE_BPS

    defaults = load_config(write(tmp_path, GOOD), env={}).fleet
    assert (defaults.download_min_rate_bps, defaults.download_deadline_floor_s) == (
        DEFAULT_MIN_RATE_BPS,
        DEFAULT_DEADLINE_FLOOR_S,
    )
    text = GOOD + "\n[fleet]\ndownload_min_rate_bps = 1000\ndownload_deadline_floor_s = 30.5\n"
    fleet = load_config(write(tmp_path, text), env={}).fleet
    assert (fleet.download_min_rate_bps, fleet.download_deadline_floor_s) == (1000, 30.5)
    path = write(tmp_path, text.replace("= 1000", "= 0"))
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert (
        str(info.value)
        == f"{path}:18: fleet.download_min_rate_bps: Input should be greater than or equal to 1 (got 0)"
    )
    env = {"EDGEPROOF_FLEET__DOWNLOAD_DEADLINE_FLOOR_S": "0.5"}
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, GOOD), env=env)
    assert str(info.value) == (
        "environment variable EDGEPROOF_FLEET__DOWNLOAD_DEADLINE_FLOOR_S: fleet.download_deadline_floor_s: "
        "Input should be greater than or equal to 1 (got 0.5)"
    )
