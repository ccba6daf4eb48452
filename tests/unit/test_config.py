import json

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


def test_env_override_with_unknown_key_is_refused(tmp_path):
    path = write(tmp_path, GOOD)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"EDGEPROOF_MQTT__PROT": "1"})
    assert "environment (mqtt.prot)" in str(info.value)
    assert "did you mean 'port'?" in str(info.value)
    with pytest.raises(ConfigError, match="unknown section 'mqt'"):
        load_config(path, env={"EDGEPROOF_MQT__PORT": "1"})


def test_cli_config_check(tmp_path, capsys):
    good = write(tmp_path, GOOD)
    assert main(["config", "check", str(good)]) == 0
    assert capsys.readouterr().out.strip() == f"{good}: ok"
    assert main(["config", "check", str(good), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["mqtt"]["port"] == 1883
    bad = write(tmp_path, GOOD.replace("window_s", "windw_s"), "bad.toml")
    assert main(["config", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.toml:15: proofs.windw_s: unknown key 'windw_s'; did you mean 'window_s'?" in err
    assert "Traceback" not in err
