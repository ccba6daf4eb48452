"""The production broker (deploy/mosquitto/) rendered for a test: TLS with a throw-away CA, a real
password file, and the SHIPPED acl file used in place (never a copy-edited one).

Only paths and the port are substituted in mosquitto.conf (:func:`render_production_conf`);
every other line, including the session and client-id settings under test, is the shipped one.
``deploy_dir`` lets a test point at another copy of deploy/mosquitto (e.g. an older revision
extracted with ``git show``) to check that a test fails on it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from agent.transport.settings import MqttSettings
from tests.support.mosquitto import MosquittoBroker, free_port

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto"
DEV_A = "7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU"
DEV_B = "9WzDXwBbmkg8ZTbNMqUxvQRAyrZzDsGYdLVL9zYtAWWM"
PASSWORDS = {DEV_A: "pw-device-a", DEV_B: "pw-device-b", "coordinator": "pw-coordinator"}


def openssl(*args: str, cwd: Path) -> None:
    if shutil.which("openssl") is None:
        raise RuntimeError("openssl is needed to create test certificates: apt-get install openssl")
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> None:
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip


def make_cert(directory: Path, name: str, ca: str, cn: str, ext: str) -> None:
    (directory / f"{name}.ext").write_text(ext + "\n")
    openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}",
        cwd=directory,
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
        cwd=directory,
    )  # fmt: skip


def write_passwords(passwd: Path, passwords: dict[str, str]) -> None:
    passwd.touch()
    for user, password in passwords.items():
        subprocess.run(
            ["mosquitto_passwd", "-b", str(passwd), user, password], check=True, capture_output=True
        )


def render_production_conf(etc: Path, workdir: Path, port: int, deploy_dir: Path = DEPLOY) -> str:
    """deploy/mosquitto/mosquitto.conf with its paths moved into the test's tmp dir.

    The acl_file line points at ``deploy_dir/acl`` itself; the password file, certificates and
    persistence live under ``etc`` / ``workdir``; the listener moves to ``127.0.0.1:port``.
    """
    text = (deploy_dir / "mosquitto.conf").read_text()
    text, n = re.subn(r"(?m)^acl_file /etc/mosquitto/edgeproof/acl$", f"acl_file {deploy_dir / 'acl'}", text)
    assert n == 1, "the production conf must have exactly one `acl_file /etc/mosquitto/edgeproof/acl` line"
    text = text.replace("/etc/mosquitto/edgeproof/", f"{etc}/")
    text = text.replace("persistence_location /var/lib/mosquitto/", f"persistence_location {workdir}/")
    text, n = re.subn(r"(?m)^listener 8883$", f"listener {port} 127.0.0.1", text)
    assert n == 1, "the production conf must have exactly one `listener 8883` line"
    text = text.replace("log_dest syslog", f"log_dest file {workdir}/mosquitto.log\nlog_type debug")
    return text


@dataclass
class SecureBroker:
    broker: MosquittoBroker
    etc: Path

    @property
    def ca_file(self) -> str:
        return str(self.etc / "ca.crt")

    def settings(self, user: str, password: str | None = None, **kw: object) -> MqttSettings:
        return MqttSettings.model_validate(
            {
                "host": "127.0.0.1",
                "port": self.broker.port,
                "username": user,
                "password": PASSWORDS.get(user, "") if password is None else password,
                "tls": {"ca_file": self.ca_file, **kw.pop("tls", {})},  # type: ignore[dict-item]
                "reconnect_min_s": 0.2,
                "reconnect_max_s": 1.0,
                **kw,
            }
        )


def start_secure_broker(etc: Path, workdir: Path, deploy_dir: Path = DEPLOY) -> SecureBroker:
    """CA, server and device certificates, the password file, and the broker with the shipped conf."""
    etc.mkdir(parents=True, exist_ok=True)
    make_ca(etc, "ca")
    make_cert(etc, "server", "ca", "127.0.0.1", "subjectAltName=IP:127.0.0.1")
    make_cert(etc, "device", "ca", DEV_A, "extendedKeyUsage=clientAuth")
    make_ca(etc, "other-ca")
    write_passwords(etc / "passwd", PASSWORDS)
    port = free_port()
    conf = render_production_conf(etc, workdir, port, deploy_dir)
    broker = MosquittoBroker(workdir, port=port, conf_text=conf)
    broker.start()
    return SecureBroker(broker, etc)


def start_broker_with_ca(
    etc: Path, workdir: Path, *, require_certificate: bool = False, deploy_dir: Path = DEPLOY
) -> SecureBroker:
    """The shipped conf and acl, with the CA and password file already in ``etc`` (``ca.crt``,
    ``ca.key``, ``passwd``, e.g. written by ``edgeproof broker credentials --ca etc``): only the
    server certificate is made here.  ``require_certificate`` flips that one line of the conf,
    to show that a client certificate is what lets a client in."""
    make_cert(etc, "server", "ca", "127.0.0.1", "subjectAltName=IP:127.0.0.1")
    port = free_port()
    conf = render_production_conf(etc, workdir, port, deploy_dir)
    if require_certificate:
        conf, n = re.subn(r"(?m)^require_certificate false$", "require_certificate true", conf)
        assert n == 1, "the production conf must have exactly one `require_certificate false` line"
    broker = MosquittoBroker(workdir, port=port, conf_text=conf)
    broker.start()
    return SecureBroker(broker, etc)
