"""Apache Kafka in KRaft mode, run from the Maven jars that ``ci/kafka/pom.xml`` names.

Two uses: the test harness (a 3-broker cluster, replication factor 3, ``min.insync.replicas=2``) and the
durable embedded mode (``AGENTGOV_EMBEDDED_BROKER=kafka``: one node whose log lives under
``.agentgov/kafka`` and survives a restart or a ``kill -9``). Needs Java 17+; the jars are resolved once
with Maven into an ignored cache (``.cache/kafka/libs``) and reused.

Example::

    with KraftCluster(tmp_path / "kafka", nodes=3) as cluster:
        Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all"})
        cluster.kill(2)                        # SIGKILL broker 2 ...
        cluster.restart(2)                     # ... and bring it back on the same log
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from types import TracebackType

from confluent_kafka.admin import AdminClient

from .broker import free_port, port_free
from .errors import BrokerError

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
POM = REPO / "ci" / "kafka" / "pom.xml"
CACHE = REPO / ".cache" / "kafka"
HOW_TO_ENABLE = "install a JDK 17+ and Maven (Debian: apt-get install openjdk-17-jdk-headless maven)"

LOG4J = """status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stdout.ref = STDOUT
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = INFO
# with ACLs on: every refused request, one line naming principal, operation and resource
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = INFO
logger.authorizer.additivity = false
logger.authorizer.appenderRef.stdout.ref = STDOUT
"""


def java_missing() -> str | None:
    """Why the Kafka engine cannot run here, or None when it can."""
    for tool in ("java", "mvn"):
        if shutil.which(tool) is None:
            return f"no `{tool}` on PATH"
    return None


def kafka_libs(pom: Path = POM, cache: Path = CACHE) -> Path:
    """The folder of Kafka server jars, resolved with Maven on first use (idempotent: keyed by the pom)."""
    if not pom.exists():
        raise BrokerError(f"{pom} not found: the Kafka engine runs from a source checkout", pom=str(pom))
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()[:16]
    libs = cache / digest / "libs"
    stamp = libs / ".resolved"
    if stamp.exists():
        return libs
    missing = java_missing()
    if missing:
        raise BrokerError(f"cannot run Apache Kafka: {missing}; {HOW_TO_ENABLE}")
    tmp = libs.with_name(f"libs.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = ["mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies", "-DincludeScope=runtime",
           f"-DoutputDirectory={tmp}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise BrokerError(f"maven could not resolve the Kafka jars: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    stamp.write_text(digest + "\n")
    return libs


def new_cluster_id() -> str:
    """A random KRaft cluster id: 16 bytes, URL-safe base64, never starting with ``-``. Kafka's own
    ``Uuid.randomUuid`` draws again for the same reason: its tools read the id as an option's value, and one
    in 64 ids would otherwise read as an option (``kafka-storage format`` then prints its usage and fails)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _die_with_parent() -> None:
    """Child side of Popen: a broker whose supervisor is SIGKILLed goes too (no orphan holding the port)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class KraftNode:
    """One combined broker+controller process. ``kill()`` is SIGKILL; ``start()`` again reuses its log."""

    def __init__(self, node_id: int, root: Path, port: int, controller_port: int) -> None:
        self.node_id = node_id
        self.root = root
        self.port = port
        self.controller_port = controller_port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def config(self) -> Path:
        return self.root / "server.properties"

    def write_config(self, voters: str, nodes: int, extra: dict[str, str], admin_password: str | None = None) -> None:
        isr = str(min(2, nodes))
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data),
            # the replication contract the tests prove (compose/docker-compose.yml sets the same)
            "default.replication.factor": str(nodes),
            "min.insync.replicas": isr,
            "offsets.topic.replication.factor": str(nodes),
            "transaction.state.log.replication.factor": str(nodes),
            "transaction.state.log.min.isr": isr,
            "auto.create.topics.enable": "false",
            "num.partitions": "6",
            # start-up speed on a small machine, not semantics
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.num.partitions": "10",
            "group.initial.rebalance.delay.ms": "0",
            **(self._secure(admin_password) if admin_password else {}),
            **extra,
        }
        self.root.mkdir(parents=True, exist_ok=True)
        self.config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.root / "log4j2.properties").write_text(LOG4J)

    def _secure(self, admin: str) -> dict[str, str]:
        """SASL/SCRAM-SHA-512 for clients and brokers, SASL/PLAIN between controllers (SCRAM credentials live
        in the metadata the controllers serve), and the StandardAuthorizer: nothing is allowed without an ACL
        except to ``admin``."""
        scram = f'org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="{admin}";'
        plain = (f'org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" '
                 f'password="{admin}" user_admin="{admin}";')
        return {
            "listeners": f"SASL_PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"SASL_PLAINTEXT://127.0.0.1:{self.port}",
            "listener.security.protocol.map": "SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT",
            "inter.broker.listener.name": "SASL_PLAINTEXT",
            "sasl.enabled.mechanisms": "SCRAM-SHA-512",
            "sasl.mechanism.inter.broker.protocol": "SCRAM-SHA-512",
            "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config": scram,
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config": plain,
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": "User:admin",
            "allow.everyone.if.no.acl.found": "false",
        }

    def _java(self, libs: Path, main: str, *args: str, heap: str = "512m") -> list[str]:
        return ["java", f"-Xmx{heap}", "-Xss1m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={self.root / 'log4j2.properties'}", "-cp", f"{libs}/*", main, *args]

    def format(self, libs: Path, cluster_id: str, users: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Format the log dir (no-op when already formatted: a durable restart keeps its data), seeding the
        SCRAM credentials of ``users``."""
        scram: list[str] = []
        for name, password in (users or {}).items():
            scram += ["--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]"]
        cmd = self._java(libs, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
                         f"--config={self.config}",
                         "--ignore-formatted", *scram, heap="256m")
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def start(self, libs: Path) -> KraftNode:
        if self.proc is not None and self.proc.poll() is None:
            return self
        for port in (self.port, self.controller_port):
            if not port_free(port):
                raise BrokerError(f"port {port} is in use: another broker is listening there", port=port)
        out = open(self.root / "server.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(self._java(libs, "kafka.Kafka", str(self.config)), stdout=out,
                                     stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        out.close()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no controlled shutdown, no flush."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM: controlled shutdown (leadership moves away first)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()


class KraftCluster:
    """``nodes`` combined-mode KRaft nodes on loopback, all voters. ``root`` holds each node's config and log."""

    def __init__(self, root: Path, nodes: int = 3, *, ports: list[int] | None = None,
                 extra: dict[str, str] | None = None, start_timeout: float = 120.0,
                 users: dict[str, str] | None = None) -> None:
        """``users`` (name -> password, with ``admin`` among them) turns on SASL/SCRAM and ACLs."""
        if users is not None and "admin" not in users:
            raise BrokerError("a secured cluster needs an 'admin' user (its super user)")
        self.users = users
        self.root = root.resolve()
        self.extra = extra or {}
        self.start_timeout = start_timeout
        ports = ports or [free_port() for _ in range(nodes)]
        self.nodes = [KraftNode(i + 1, self.root / f"node-{i + 1}", ports[i], free_port()) for i in range(nodes)]
        self.libs: Path | None = None

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def client_config(self, user: str = "admin") -> dict[str, str | logging.Logger]:
        """librdkafka settings to reach this cluster, as ``user`` when it is secured."""
        conf: dict[str, str | logging.Logger] = {"bootstrap.servers": self.bootstrap,
                                                 "logger": logging.getLogger("librdkafka")}
        if self.users is not None:
            conf.update({"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-512",
                         "sasl.username": user, "sasl.password": self.users[user]})
        return conf

    def node(self, node_id: int) -> KraftNode:
        return self.nodes[node_id - 1]

    def start(self) -> KraftCluster:
        self.libs = kafka_libs()
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        id_file = self.root / "cluster.id"
        self.root.mkdir(parents=True, exist_ok=True)
        if not id_file.exists():
            id_file.write_text(new_cluster_id())
        cluster_id = id_file.read_text().strip()
        admin = self.users["admin"] if self.users else None
        for n in self.nodes:
            n.write_config(voters, len(self.nodes), self.extra, admin)
        formats = [n.format(self.libs, cluster_id, self.users) for n in self.nodes]
        for n, proc in zip(self.nodes, formats, strict=True):
            out, _ = proc.communicate()
            if proc.returncode != 0:
                raise BrokerError(f"formatting Kafka node {n.node_id} failed: {out.decode()[-1500:]}")
        for n in self.nodes:
            n.start(self.libs)
        try:
            self.wait_healthy(self.start_timeout)
        except BrokerError:
            self.stop()
            raise
        log.info("kafka cluster up", extra={"kv": {"bootstrap": self.bootstrap, "nodes": len(self.nodes)}})
        return self

    def wait_healthy(self, timeout: float = 120.0) -> None:
        """Every node registered and the metadata quorum answering (an admin request that needs a controller)."""
        admin = AdminClient(self.client_config())
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            for n in self.nodes:
                if n.proc is not None and n.proc.poll() is not None:
                    tail = (n.root / "server.log").read_text(errors="replace")[-1500:]
                    raise BrokerError(f"kafka node {n.node_id} exited with {n.proc.returncode}: {tail}")
            try:
                md = admin.list_topics(timeout=2)
                if len(md.brokers) == len(self.nodes):
                    admin.describe_cluster(request_timeout=5).result()
                    return
                last = f"{len(md.brokers)} of {len(self.nodes)} brokers registered"
            except Exception as exc:  # KafkaException while listeners come up
                last = str(exc)
            time.sleep(0.5)
        raise BrokerError(f"kafka cluster at {self.bootstrap} not healthy after {timeout}s: {last}")

    def wait_in_sync(self, timeout: float = 180.0) -> float:
        """Seconds until every partition of every topic has all its replicas in sync (after a restart)."""
        admin = AdminClient(self.client_config())
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            try:
                md = admin.list_topics(timeout=10)
                if all(len(p.isrs) == len(p.replicas) for t in md.topics.values() for p in t.partitions.values()):
                    return time.monotonic() - t0
            except Exception:  # KafkaException while a node is still coming back
                pass
            time.sleep(1.0)
        raise BrokerError(f"replicas of {self.bootstrap} not back in sync after {timeout}s")

    def alive(self) -> bool:
        return all(n.alive() for n in self.nodes)

    def revive(self) -> None:
        """Start every node that is not running, on its log, and wait until the cluster answers."""
        for n in self.nodes:
            if not n.alive():
                self.restart(n.node_id)
        self.wait_healthy(self.start_timeout)

    def kill(self, node_id: int) -> None:
        self.node(node_id).kill()

    def restart(self, node_id: int) -> None:
        assert self.libs is not None, "start() the cluster first"
        self.node(node_id).start(self.libs)

    def leader(self, topic: str, partition: int = 0) -> int:
        """The node id leading ``topic``/``partition`` now (``-1`` while it has none)."""
        admin = AdminClient(self.client_config())
        md = admin.list_topics(topic, timeout=10)
        return int(md.topics[topic].partitions[partition].leader)

    def stop(self) -> None:
        for n in self.nodes:
            if n.alive():
                n.proc.terminate()  # type: ignore[union-attr]
        for n in self.nodes:
            n.stop()

    def __enter__(self) -> KraftCluster:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
