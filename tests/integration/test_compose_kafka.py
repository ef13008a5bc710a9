"""compose's Kafka security, booted for real: the laptop variant's broker settings (rendered by
``docker-compose config`` with .env.example) and compose/kafka/start.sh, run from the Kafka test tier's
jars, then the ``kafka-access`` one-shot and an agent writing over the host (EXTERNAL) listener.

The environment is turned into server.properties by the apache/kafka image's rule (``KAFKA_`` dropped,
``___`` -> ``-``, ``__`` -> ``_``, ``_`` -> ``.``, lower case); host names become loopback ports.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer
from pydantic import SecretStr

from pipeline.broker import free_port
from pipeline.drafts import draft
from pipeline.errors import PublishError
from pipeline.kraft import _die_with_parent, kafka_libs
from pipeline.publisher import TransitionPublisher
from pipeline.runner import settings_env
from pipeline.settings import Settings
from pipeline.topics import ensure_topics
from tests.support.compose import BASE, COMPOSE, LAPTOP, env_example, rendered
from tests.support.helpers import wait_until

pytestmark = pytest.mark.kafka
NOT_PROPERTIES = {"KAFKA_OPTS", "KAFKA_HEAP_OPTS", "KAFKA_JVM_PERFORMANCE_OPTS", "KAFKA_LOG4J_OPTS"}


def image_properties(env: dict[str, str]) -> dict[str, str]:
    out = {}
    for key, value in env.items():
        if not key.startswith("KAFKA_") or key in NOT_PROPERTIES:
            continue
        name = key[len("KAFKA_"):].replace("___", "\0").replace("__", "\1").replace("_", ".")
        out[name.replace("\0", "-").replace("\1", "_").lower()] = str(value)
    return out


class ComposeBroker:
    def __init__(self, root: Path) -> None:
        env = rendered(BASE, LAPTOP)["services"]["kafka-1"]["environment"]
        self.root, self.env = root, env
        self.port, self.controller, self.external = free_port(), free_port(), free_port()
        props = image_properties(env)
        props["node.id"] = str(env["KAFKA_NODE_ID"])
        props["controller.quorum.voters"] = f"1@127.0.0.1:{self.controller}"
        props["listeners"] = (f"BROKER://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller},"
                              f"EXTERNAL://127.0.0.1:{self.external}")
        props["advertised.listeners"] = re.sub(r"BROKER://kafka-1:9092", f"BROKER://127.0.0.1:{self.port}",
                                               props["advertised.listeners"])
        props["advertised.listeners"] = re.sub(r"EXTERNAL://localhost:\d+", f"EXTERNAL://127.0.0.1:{self.external}",
                                               props["advertised.listeners"])
        props["log.dirs"] = str(root / "data")
        props["offsets.topic.num.partitions"] = props["transaction.state.log.num.partitions"] = "4"
        self.config = root / "server.properties"
        self.config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ComposeBroker:
        libs = kafka_libs()
        java = ["java", "-Xmx384m", f"-Djava.security.auth.login.config={self.root / 'kafka_jaas.conf'}",
                "-cp", f"{libs}/*"]
        fmt = subprocess.run([*java, "kafka.tools.StorageTool", "format", "-t", str(self.env["CLUSTER_ID"]),
                              "-c", str(self.config), "--ignore-formatted"], capture_output=True, text=True)
        assert fmt.returncode == 0, fmt.stdout + fmt.stderr
        run = self.root / "run.sh"  # what the image's /etc/kafka/docker/run does last
        run.write_text("#!/bin/sh\nexec " + " ".join(f"'{a}'" for a in java) + f" kafka.Kafka '{self.config}'\n")
        run.chmod(0o755)
        env = {**os.environ, "BROKER_ADMIN_PASSWORD": str(self.env["BROKER_ADMIN_PASSWORD"]),
               "BROKER_CONF_DIR": str(self.root), "BROKER_RUN": str(run)}
        out = open(self.root / "server.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(["/bin/sh", str(COMPOSE / "kafka" / "start.sh")], env=env, stdout=out,
                                     stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        out.close()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def compose_broker(tmp_path: Path) -> Iterator[ComposeBroker]:
    broker = ComposeBroker(tmp_path).start()
    try:
        yield broker
    finally:
        broker.stop()


def test_compose_kafka_security_boots_and_each_principal_gets_only_its_acls(compose_broker: ComposeBroker) -> None:
    secrets = env_example()  # a broker of its own: the default topic names are free
    admin = Settings.load(kafka_bootstrap=f"127.0.0.1:{compose_broker.port}", kafka_security_protocol="SASL_PLAINTEXT",
                          kafka_sasl_mechanism="PLAIN", kafka_sasl_username="admin",
                          kafka_sasl_password=SecretStr(secrets["KAFKA_ADMIN_PASSWORD"]), topic_replication=1,
                          metrics_port=0)

    def up() -> bool:
        try:
            ensure_topics(admin)  # compose's `topics` one-shot, as the super user
            return True
        except Exception:  # not listening yet
            return False

    assert wait_until(up, 90, interval=1.0), (compose_broker.root / "server.log").read_text()[-3000:]
    env = {**os.environ, **settings_env(admin),
           **{k: v for k, v in secrets.items() if k.startswith("SCRAM_PASSWORD_")}}
    done = subprocess.run([sys.executable, "-m", "consumers.kafka_access"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    # an agent over the host listener (SCRAM only there): transitions yes, assessments no
    agent = admin.model_copy(update={
        "kafka_bootstrap": f"127.0.0.1:{compose_broker.external}", "kafka_sasl_mechanism": "SCRAM-SHA-512",
        "kafka_sasl_username": "agent", "kafka_sasl_password": SecretStr(secrets["SCRAM_PASSWORD_AGENT"])})
    pub = TransitionPublisher(agent)
    pub.publish(draft(run_id="run-compose"))
    pub.flush(30)
    assert pub.delivered == 1
    forged = TransitionPublisher(agent.model_copy(update={"topic_transitions": admin.topic_assessments}))
    forged.publish(draft(run_id="run-compose-forged"))
    with pytest.raises(PublishError, match=r"(?i)authorization"):
        forged.flush(30)
    # the super user cannot log in over the host listener at all (PLAIN is not offered there)
    host = agent.model_copy(update={"kafka_sasl_mechanism": "PLAIN", "kafka_sasl_username": "admin",
                                    "kafka_sasl_password": SecretStr(secrets["KAFKA_ADMIN_PASSWORD"])})
    host_admin = TransitionPublisher(host, producer=Producer(host.kafka_config(**{"message.timeout.ms": 5000})))
    host_admin.publish(draft(run_id="run-compose-admin"))
    with pytest.raises(PublishError):
        host_admin.flush(30)
