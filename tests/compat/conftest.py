"""The relay under test for the Python compatibility job: one real `pulsar-relay` process on a
private Valkey, started, restarted and stopped here, and nothing else.

tests/compat/run.sh provides the environment (it owns the Valkey server and the virtualenv):
  PULSAR_COMPAT_RELAY_BIN    the relay binary (target/debug/pulsar-relay)
  PULSAR_COMPAT_VALKEY_PORT  port of the private valkey-server on 127.0.0.1
  PULSAR_COMPAT_WORKDIR      scratch directory for relay logs and the relay's pid file

The relay is started the way an operator migrating from the Python relay would start it: a
Valkey backend with persisted acks, an HS256 secret and the bootstrap administrator from
PULSAR_BOOTSTRAP_ADMIN_*. Each topic namespace mode runs the whole job once, under its own
Valkey key prefix.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from relay_settings import ADMIN_EMAIL, ADMIN_PASSWORD, ADMIN_USERNAME, JWT_SECRET

# The relay prints this line on stdout once its sockets are bound.
LISTENING = re.compile(r"pulsar-relay listening on http://(\S+)")
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
LOG_TAIL_LINES = 60


class RelayStartError(RuntimeError):
    """The relay did not come up; the message carries its output."""


def _required_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.exit(f"{name} is not set: run the job through tests/compat/run.sh", returncode=2)
    return value


class RelayProcess:
    """One relay configuration; `restart` brings it back on the same port, as a service
    manager would, so clients keep their base URL."""

    def __init__(self, binary: str, valkey_port: str, workdir: Path, namespace: str) -> None:
        self.binary = binary
        self.valkey_port = valkey_port
        self.namespace = namespace
        self.log_path = workdir / f"relay-{namespace}.log"
        self.pid_path = workdir / "relay.pid"
        self.port = 0
        self.starts = 0
        self._start_offset = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        # The caller's PULSAR_* variables must not change what the job tests.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PULSAR_")}
        env.update(
            {
                "PULSAR_SERVER_HOST": "127.0.0.1",
                "PULSAR_SERVER_HTTP_PORT": str(self.port),
                "PULSAR_SERVER_SHARDS": "2",
                "PULSAR_SERVER_TOPIC_NAMESPACE": self.namespace,
                "PULSAR_STORAGE_BACKEND": "valkey",
                "PULSAR_STORAGE_ACK": "persisted",
                "PULSAR_VALKEY_HOST": "127.0.0.1",
                "PULSAR_VALKEY_PORT": self.valkey_port,
                "PULSAR_VALKEY_KEY_PREFIX": f"compat-{self.namespace}",
                "PULSAR_JWT_SECRET_KEY": JWT_SECRET,
                "PULSAR_BOOTSTRAP_ADMIN_USERNAME": ADMIN_USERNAME,
                "PULSAR_BOOTSTRAP_ADMIN_PASSWORD": ADMIN_PASSWORD,
                "PULSAR_BOOTSTRAP_ADMIN_EMAIL": ADMIN_EMAIL,
                # Every test logs in afresh; the default (5 per minute, as upstream) would
                # turn the job into a rate-limit test.
                "PULSAR_ACCOUNTS_LOGIN_RATE": "1000",
            }
        )
        return env

    def start(self) -> None:
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"=== relay start {self.starts} (port {self.port or 'any'}) ===\n".encode())
            log.flush()
            self._start_offset = log.tell()
            self.proc = subprocess.Popen(
                [self.binary],
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        # run.sh kills whatever this names if pytest itself dies.
        self.pid_path.write_text(str(self.proc.pid))
        deadline = time.monotonic() + START_TIMEOUT_S
        self.port = self._wait_listening(deadline)
        self._wait_ready(deadline)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self.pid_path.unlink(missing_ok=True)

    def restart(self) -> None:
        """SIGTERM, wait for the exit, start again on the same port."""
        self.stop()
        self.start()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no relay log)"
        return "\n".join(text.splitlines()[-lines:])

    def _output_of_this_start(self) -> str:
        with open(self.log_path, "rb") as log:
            log.seek(self._start_offset)
            return log.read().decode(errors="replace")

    def _fail(self, why: str) -> RelayStartError:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        return RelayStartError(f"{why}; relay output:\n{self._output_of_this_start()}")

    def _wait_listening(self, deadline: float) -> int:
        assert self.proc is not None
        while True:
            found = LISTENING.search(self._output_of_this_start())
            if found:
                return int(found.group(1).rsplit(":", 1)[1])
            code = self.proc.poll()
            if code is not None:
                raise self._fail(f"the relay exited with status {code} before listening")
            if time.monotonic() > deadline:
                raise self._fail(f"no listening line within {START_TIMEOUT_S:.0f} s")
            time.sleep(0.05)

    def _wait_ready(self, deadline: float) -> None:
        # /ready answers 200 once the shards serve and the store is reachable.
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise self._fail(f"GET /ready did not answer 200 within {START_TIMEOUT_S:.0f} s")
            time.sleep(0.1)


@pytest.fixture(scope="session", params=["global", "per_user"])
def relay(request: pytest.FixtureRequest):
    """The relay, once per `server.topic_namespace` mode; tests may `restart()` it."""
    process = RelayProcess(
        binary=_required_env("PULSAR_COMPAT_RELAY_BIN"),
        valkey_port=_required_env("PULSAR_COMPAT_VALKEY_PORT"),
        workdir=Path(_required_env("PULSAR_COMPAT_WORKDIR")),
        namespace=request.param,
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture
def new_topic(request: pytest.FixtureRequest):
    """Makes topic names unique to the test (letters, digits, '-' and '_' only, which both
    the Python relay's and this relay's name rules accept)."""

    def make(role: str = "t") -> str:
        return f"compat-{request.node.originalname}-{role}-{uuid.uuid4().hex[:8]}"

    return make


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    relay_process = getattr(item, "funcargs", {}).get("relay")
    if report.failed and isinstance(relay_process, RelayProcess):
        report.sections.append(
            (f"relay log ({relay_process.log_path}, last {LOG_TAIL_LINES} lines)", relay_process.log_tail())
        )
    return report
