"""A real RabbitMQ node with the MQTT plugin for tests: the same interface as MosquittoBroker.

Isolated from any system RabbitMQ: its own node name, its own epmd on a free loopback port,
AMQP off, MQTT on a free loopback port, every file (config, definitions, mnesia, logs, the
Erlang cookie through HOME) under ``workdir``. Users, permissions and topic permissions come
from ``fedge.orchestrator.rabbitmq_files`` and are loaded at boot (``load_definitions``), which
saves one Erlang VM start (~1 s) per ``rabbitmqctl`` call. ``add_user`` uses rabbitmqctl for a
user added to a running node. Never skips: without RabbitMQ the test fails with the install
hint. RabbitMQ 3.10 speaks MQTT 3.1.1 only: ``mqtt_protocol`` tells configs what to use.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from fedge.demo.broker_process import BrokerProcess
from fedge.demo.mosquitto import free_port, make_users
from fedge.orchestrator import rabbitmq_files
from fedge.orchestrator.broker_files import DEFAULT_ORCHESTRATOR_USER

INSTALL_HINT = "install rabbitmq-server (apt-get install rabbitmq-server)"
SBIN = Path("/usr/lib/rabbitmq/bin")  # Debian's; /usr/sbin's wrappers switch to user rabbitmq
_READY = "Server startup complete"
_PLUGINS_KEPT = {"rabbitmq_mqtt", "rabbitmq_prelaunch"}
_VM_ARGS = "+S 1:1 +A 4 +sbwt none +sbwtdcpu none +sbwtdio none"  # no busy-waiting cores


def find_rabbitmq() -> Path:
    """The directory holding rabbitmq-server and rabbitmqctl; fail the test if there is none."""
    for directory in (SBIN, Path("/usr/local/lib/rabbitmq/bin")):
        if (directory / "rabbitmq-server").exists():
            return directory
    found = shutil.which("rabbitmq-server")
    if found:
        return Path(found).parent
    pytest.fail(f"rabbitmq-server not found: {INSTALL_HINT}", pytrace=False)


class RabbitMQBroker(BrokerProcess):
    """One RabbitMQ node with files in ``workdir``; interface of ``MosquittoBroker``."""

    mqtt_protocol = "3.1.1"

    def __init__(
        self,
        workdir: str | Path,
        *,
        users: Mapping[str, str] | None = None,
        federation: str = "demo",
        orchestrator_user: str = DEFAULT_ORCHESTRATOR_USER,
        port: int | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.users: dict[str, str] = dict(users) if users is not None else make_users()
        self.federation = federation
        self.orchestrator_user = orchestrator_user
        self.host = "127.0.0.1"
        self.start_timeout = start_timeout
        self.node = f"fedge-{secrets.token_hex(4)}@localhost"
        self._port = port if port is not None else free_port(self.host)
        self._dist_port = free_port(self.host)
        self._epmd_port = free_port(self.host)
        self.log_dir = self.workdir / "log"
        self.log_path = self.log_dir / f"{self.node}.log"
        self.start_seconds = 0.0  # how long the last start() took
        self._proc: subprocess.Popen[bytes] | None = None
        self._epmd: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._write_files()

    # --- the MosquittoBroker interface (address, pid, running: BrokerProcess) ---
    def start(self) -> RabbitMQBroker:
        """Start epmd and the node; wait until the MQTT listener accepts connections."""
        if self.running:
            return self
        bindir = find_rabbitmq()
        began = time.monotonic()
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._epmd = subprocess.Popen(
            ["epmd", "-port", str(self._epmd_port), "-address", "127.0.0.1"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=self._env(),
        )
        with open(self.workdir / "server.out", "ab") as out:
            self._proc = subprocess.Popen(
                [str(bindir / "rabbitmq-server")],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=self._env(),
                start_new_session=True,  # stop() signals the script and its Erlang VM together
            )
        error = self._wait_ready()
        if error is not None:
            self.stop()
            pytest.fail(
                f"rabbitmq did not start on {self.url}: {error}\n"
                f"--- tail of {self.log_path} ---\n{self.log_tail()}",
                pytrace=False,
            )
        self.start_seconds = time.monotonic() - began
        return self

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the node (it shuts down cleanly: retained messages and queues on disk),
        SIGKILL its process group if it hangs; then stop our epmd."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            # the script traps TERM and runs `rabbitmqctl stop`; the VM itself obeys TERM too
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
            self._wait_group_gone(proc.pid, timeout)
        epmd, self._epmd = self._epmd, None
        if epmd is not None and epmd.poll() is None:
            epmd.terminate()
            epmd.wait(timeout=5)

    def restart(self) -> None:
        """Stop and start again on the same ports with the same files (queues, retained kept)."""
        self.stop()
        self.start()

    def log_tail(self, lines: int = 30) -> str:
        parts = []
        for path in (self.workdir / "server.out", self.log_path):
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            parts.append("\n".join(text.splitlines()[-lines:]))
        return "\n".join(parts) or "(no log)"

    def __repr__(self) -> str:
        return f"RabbitMQBroker({self.url}, node={self.node}, pid={self.pid})"

    # --- RabbitMQ only ---
    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl ARGS`` against this node; fail the test if it fails."""
        result = subprocess.run(
            [str(find_rabbitmq() / "rabbitmqctl"), "-n", self.node, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self._env(),
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(f"rabbitmqctl {' '.join(args)}: {result.stderr or result.stdout}")
        return result.stdout

    def add_user(self, name: str, password: str) -> None:
        """Add a device to the running node with the rules ``rabbitmq_files`` renders."""
        perms = rabbitmq_files.queue_permissions(name)
        topic = rabbitmq_files.topic_permissions(name, federation=self.federation)
        self.ctl("add_user", name, password)
        self.ctl("set_permissions", name, perms["configure"], perms["write"], perms["read"])
        self.ctl(
            "set_topic_permissions", name, rabbitmq_files.EXCHANGE, topic["write"], topic["read"]
        )
        self.users[name] = password

    def reset(self) -> None:
        """Forget what the previous test left: every user's session (queue and subscriptions)
        and the retained messages on the federation's topics. Several tests can then share one
        node, which saves its start (10-20 s) per test."""
        import paho.mqtt.client as mqtt

        for user, password in self.users.items():
            # A clean-session connect deletes the client's persistent session (its queues).
            client = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2, client_id=user, clean_session=True
            )
            client.username_pw_set(user, password)
            client.connect(self.host, self._port, keepalive=10)
            client.loop_start()
            if user == self.orchestrator_user:
                p = self.prefix
                topics = [f"{p}/round/current", f"{p}/round/async", f"{p}/orchestrator/status"]
                for agent in self.users:
                    topics += [
                        f"{p}/agent/{agent}/{kind}"
                        for kind in ("status", "invite", "cmd", "down", "up/msg", "up/chunk")
                    ]
                for topic in topics:  # an empty retained payload clears the topic
                    client.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)
            client.disconnect()
            client.loop_stop()

    # --- internals ---
    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            HOME=str(self.workdir),  # the Erlang cookie lives in $HOME
            ERL_EPMD_PORT=str(self._epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_DIST_PORT=str(self._dist_port),
            RABBITMQ_CONFIG_FILE=str(self.workdir / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.workdir / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(self.workdir / "rabbitmq-env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.workdir / "enabled_plugins"),
            RABBITMQ_PLUGINS_DIR=str(self._plugins_dir()),
            RABBITMQ_MNESIA_BASE=str(self.workdir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.log_dir),
            RABBITMQ_PID_FILE=str(self.workdir / "rabbitmq.pid"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=_VM_ARGS,
            RABBITMQ_CTL_ERL_ARGS=_VM_ARGS,
        )
        return env

    def _write_files(self) -> None:
        defs = rabbitmq_files.render_definitions(
            users=self.users, federation=self.federation, orchestrator_user=self.orchestrator_user
        )
        definitions = self.workdir / "definitions.json"
        definitions.write_text(json.dumps(defs, indent=1))
        os.chmod(definitions, 0o600)
        conf = rabbitmq_files.render_config(mqtt_port=self._port, definitions_path=definitions)
        (self.workdir / "rabbitmq.conf").write_text(conf)
        (self.workdir / "advanced.config").write_text("[].\n")
        (self.workdir / "rabbitmq-env.conf").write_text("")
        (self.workdir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")

    def _plugins_dir(self) -> Path:
        """Links to the apps the MQTT plugin needs, without the other ~40 plugins: the node
        scans every plugin's feature flags at boot (seconds on a busy 2-core machine)."""
        out = self.workdir / "plugins"
        if out.exists():
            return out
        # /usr/lib/rabbitmq/bin -> /usr/lib/rabbitmq/lib/rabbitmq_server-<version>/plugins
        source = next(find_rabbitmq().parent.glob("lib/rabbitmq_server-*/plugins"))
        out.mkdir()
        for app in source.iterdir():
            name = app.name.rsplit("-", 1)[0]
            if not name.startswith("rabbitmq_") or name in _PLUGINS_KEPT:
                (out / app.name).symlink_to(app)
        return out

    def _wait_ready(self) -> str | None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            code = self._proc.poll()
            if code is not None:
                return f"rabbitmq-server exited with code {code}"
            # The MQTT listener opens before the definitions (users) are loaded: wait for
            # the node's own word, then check the port.
            if _READY in self._log_since(self._log_offset):
                try:
                    with socket.create_connection((self.host, self._port), timeout=0.5):
                        return None
                except OSError as exc:
                    return f"started, but MQTT port {self._port} refuses connections: {exc}"
            time.sleep(0.1)
        return f"not started after {self.start_timeout:.0f} s (no {_READY!r} in its log)"

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return ""

    @staticmethod
    def _wait_group_gone(pgid: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        os.killpg(pgid, signal.SIGKILL)
