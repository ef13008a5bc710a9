"""The Confluent wire format through a real Confluent-compatible registry: Apicurio Registry (ccompat v7),
built from Maven Central by ci/registry/pom.xml (the SQL variant compose runs, on PostgreSQL), on the
3-broker Kafka cluster.

- registration, and the evolution of the transition schema from v1 to v2 under BACKWARD compatibility
  (the registry itself refuses an incompatible v3);
- the registry going away for 30 s: the SDK that registered keeps publishing, a new SDK waits for it,
  the scorer stalls on a schema id it has not seen (it never dead-letters for it) and catches up;
- the writer trusts a registry id only when it names the assessment record;
- compose's registry, started with compose's own storage settings, keeps its schemas through a crash
  (kill -9) of the registry and a restart of its database.
"""

from __future__ import annotations

import dataclasses
import json
import re
import struct
import threading
import time
import urllib.error
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from confluent_kafka import Producer

from pipeline.apicurio import CCOMPAT, POM, ApicurioRegistry, RegistryDatabase, postgres_major
from pipeline.deadletters import header
from pipeline.drafts import draft
from pipeline.errors import ConfigError
from pipeline.kraft import KraftCluster
from pipeline.publisher import TransitionPublisher
from pipeline.runner import Pipeline
from pipeline.schemas import TRANSITION, SchemaSet
from pipeline.serde import CONFLUENT_MAGIC, Serde, encode_datum, make_registry
from pipeline.settings import Settings
from tests.support.compose import BASE, rendered
from tests.support.helpers import Bus, consume
from tests.unit.scoring_factory import record

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApicurioRegistry]:
    root = tmp_path_factory.mktemp("apicurio")
    with RegistryDatabase(root / "db") as db, ApicurioRegistry(root, db.env()) as reg:
        yield reg


@pytest.fixture
def bus(kafka_cluster: KraftCluster) -> Bus:
    """These tests run on the 3-broker cluster only (settings_factory follows this fixture)."""
    return Bus("kafka", kafka_cluster.bootstrap, 3, kafka_cluster)


def v1_serde(settings: Settings, registry_client: object) -> Serde:
    """A Serde whose current transition schema is v1: an agent still on the first version."""
    schemas = SchemaSet.load()
    old = SchemaSet({**schemas.versions, TRANSITION: {1: schemas.versions[TRANSITION][1]}}, schemas.by_fingerprint)
    return Serde(old, registry_client, subject=f"{settings.topic_transitions}-value")  # type: ignore[arg-type]


def publish(pub: TransitionPublisher, n: int, tag: str) -> list[str]:
    ids = [pub.publish(draft(run_id=f"run-{tag}-{i}", **{"target.identity_id": f"u-{tag}-{i}"})) for i in range(n)]
    pub.flush(90)
    return ids


def stored_ids(pipe: Pipeline) -> list[str]:
    assert pipe.sink is not None
    # FINAL, as every audit read: raw rows may repeat until merges run (docs/guarantees.md, "Raw counts")
    return [r["event_id"] for r in pipe.sink.query("SELECT event_id FROM {db}.transitions FINAL")]


def test_registration_backward_evolution_and_the_writers_schema_check(
    registry: ApicurioRegistry, settings_factory: Callable[..., Settings],
    pipeline_factory: Callable[..., Pipeline],
) -> None:
    settings = settings_factory(schema_registry_url=registry.url)
    subject = f"{settings.topic_transitions}-value"
    registry.set_compatibility(subject, "BACKWARD")
    pipe = pipeline_factory(settings)
    old = TransitionPublisher(settings, serde=v1_serde(settings, pipe.writer.registry))  # type: ignore[union-attr]
    new = TransitionPublisher(settings)
    sent = publish(old, 20, "v1") + publish(new, 20, "v2")

    versions = registry.request("GET", f"/subjects/{subject}/versions")
    assert versions == [1, 2]
    id1, id2 = old.serde.header()[1:], new.serde.header()[1:]
    assert id1 != id2
    v2 = registry.request("GET", f"/subjects/{subject}/versions/2")
    assert isinstance(v2, dict) and v2["id"] == struct.unpack(">I", id2)[0]

    assert pipe.wait_events(sent, 120), f"stored {len(set(stored_ids(pipe)) & set(sent))} of {len(sent)}"
    assert sorted(stored_ids(pipe)) == sorted(sent)  # each once, v1 data read into the v2 record
    assessments = consume(settings, settings.topic_assessments, 40)
    assert {m.value()[:1] for m in assessments} == {CONFLUENT_MAGIC}  # the scorer writes the wire format too
    assert registry.request("GET", f"/subjects/{settings.topic_assessments}-value/versions") == [1]
    assert consume(settings, settings.topic_dlq, 0, timeout=3) == []

    # The writer trusts a registry id only when it names the assessment record: a client that may write
    # the assessments topic frames a transition under the transitions subject's id -> dead letter.
    forged_record = new.complete(draft(run_id="run-forged"))
    forged = new.serde.header() + encode_datum(new.serde.current.parsed, forged_record)
    producer = Producer(settings.kafka_config(acks="all"))
    producer.produce(settings.topic_assessments, forged, key=str(forged_record["event_id"]).encode())
    assert producer.flush(30) == 0
    dead = consume(settings, settings.topic_dlq, 1, timeout=60)
    assert len(dead) == 1
    assert header(dead[0].headers(), "agentgov.error.reason") == "unknown_schema"
    assert "AgentTransition, not " in (header(dead[0].headers(), "agentgov.error.message") or "")
    assert sorted(stored_ids(pipe)) == sorted(sent)  # the forged record is not in the audit store

    # BACKWARD is the registry's rule, not ours: a v3 whose new field has no default is refused (409) ...
    raw = dict(SchemaSet.load().latest(TRANSITION).raw)
    raw["fields"] = [*raw["fields"], {"name": "cost_center", "type": "string", "doc": "required, no default"}]
    with pytest.raises(urllib.error.HTTPError) as refused:
        registry.request("POST", f"/subjects/{subject}/versions", {"schema": json.dumps(raw)})
    assert refused.value.code == 409
    # ... and an SDK carrying it fails at once with a config error, sending nothing.
    bad = Serde(SchemaSet.load(), pipe.writer.registry, subject=subject)  # type: ignore[union-attr]
    bad.current = dataclasses.replace(bad.current, version=3, raw=raw)
    with pytest.raises(ConfigError, match="409"):
        bad.header()


def test_registry_away_30s_sdk_waits_scorer_stalls_nothing_lost(
    registry: ApicurioRegistry, settings_factory: Callable[..., Settings],
    pipeline_factory: Callable[..., Pipeline],
) -> None:
    settings = settings_factory(schema_registry_url=registry.url, schema_registry_timeout_seconds=2.0)
    pipe = pipeline_factory(settings)
    sdk = TransitionPublisher(settings)
    sent = publish(sdk, 20, "before")
    assert pipe.wait_events(sent, 120)
    # An agent on v1 registers before the outage; the scorer has never seen that id.
    old = TransitionPublisher(settings, serde=v1_serde(settings, pipe.writer.registry))  # type: ignore[union-attr]
    old.serde.header()

    registry.pause()
    away = time.monotonic()
    late: list[str] = []
    errors: list[BaseException] = []

    def fresh_sdk() -> None:  # an agent that starts during the outage: its first publish waits for the registry
        try:
            late.extend(publish(TransitionPublisher(settings), 10, "fresh"))
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    starter = threading.Thread(target=fresh_sdk)
    try:
        starter.start()
        sent += publish(sdk, 20, "during")  # registered already: the registry is not on its path
        sent += publish(old, 20, "v1-during")  # an id the scorer must look up: it waits, never dead-letters
        time.sleep(max(0.0, 30 - (time.monotonic() - away)))
        assert late == [] and starter.is_alive(), "the new SDK must wait for the registry, not fail or skip it"
    finally:
        registry.resume()
    back = time.monotonic()
    starter.join(90)
    assert not errors, errors
    sent += late
    assert pipe.wait_events(sent, 180), f"stored {len(set(stored_ids(pipe)) & set(sent))} of {len(sent)}"
    caught_up = time.monotonic() - back
    assert sorted(stored_ids(pipe)) == sorted(sent)  # nothing lost, each once
    assert consume(settings, settings.topic_dlq, 0, timeout=3) == []
    logs = "".join(p.read_text(errors="replace") for p in Path(settings.state_dir).glob("*.log"))
    assert "RegistryUnavailable" in logs or "registry unreachable" in logs
    print(f"\nregistry away 30 s: pipeline caught up {caught_up:.1f} s after it came back; "
          f"{len(sent)} events stored once ({pipe.writer.stored if pipe.writer else 0} records handled), "
          f"0 dead letters")


def test_compose_registry_keeps_its_schemas_through_a_crash_and_a_database_restart(tmp_path: Path) -> None:
    """compose's schema-registry and registry-db, as ``docker-compose config`` renders them with .env.example:
    the image is the version built here, the registry runs with exactly compose's REGISTRY_DATASOURCE_*
    (host name mapped to a loopback port), and clients reach it at compose's URL path."""
    svcs = rendered(BASE)["services"]
    service, db_service = svcs["schema-registry"], svcs["registry-db"]
    built = re.search(r"<apicurio.version>(.+)</apicurio.version>", POM.read_text())
    assert built and service["image"] == f"apicurio/apicurio-registry-sql:{built[1]}"
    assert int(db_service["image"].rsplit(":", 1)[1].split(".")[0]) == postgres_major()
    db_env = db_service["environment"]
    env = {k: str(v) for k, v in service["environment"].items()}
    jdbc = re.fullmatch(r"jdbc:postgresql://registry-db:5432/(\w+)", env["REGISTRY_DATASOURCE_URL"])
    assert jdbc and jdbc[1] == db_env["POSTGRES_DB"] and env["REGISTRY_DATASOURCE_USERNAME"] == db_env["POSTGRES_USER"]
    client = urlsplit(svcs["scorer"]["environment"]["AGENTGOV_SCHEMA_REGISTRY_URL"])
    health = urlsplit(service["healthcheck"]["test"][-1])
    assert client.hostname == "schema-registry" and client.path == CCOMPAT and client.port == health.port

    db = RegistryDatabase(tmp_path / "db", database=db_env["POSTGRES_DB"], user=db_env["POSTGRES_USER"],
                          password=db_env["POSTGRES_PASSWORD"])
    env["REGISTRY_DATASOURCE_URL"] = env["REGISTRY_DATASOURCE_URL"].replace("registry-db:5432", f"127.0.0.1:{db.port}")
    reg = ApicurioRegistry(tmp_path / "registry", env)
    try:
        db.start()
        reg.start()
        assert reg.request_raw("GET", health.path) == 200  # compose's healthcheck, answered
        settings = Settings.load(schema_registry_url=reg.url, metrics_port=0)
        subject = f"{settings.topic_transitions}-value"
        reg.set_compatibility(subject, "BACKWARD")
        old = v1_serde(settings, make_registry(settings))
        sent = old.encode(record())  # an agent still on v1 publishes ...
        new_header = Serde(SchemaSet.load(), make_registry(settings), subject=subject).header()  # ... v2 arrives

        reg.kill()  # a crash: nothing flushed, nothing closed
        db.stop()  # and the database restarts (its data on disk, as on compose's volume)
        db.start()
        reg.start()
        fresh = Serde(SchemaSet.load(), make_registry(settings), subject=subject)  # a client that knows no ids
        assert reg.request("GET", f"/subjects/{subject}/versions") == [1, 2]
        assert fresh.header() == new_header  # the same schema keeps its id: nothing was re-registered
        decoded = fresh.decode(sent)  # a message framed before the crash still resolves
        assert decoded.writer_version == 1 and not decoded.current
        assert reg.request("GET", f"/config/{subject}") == {"compatibilityLevel": "BACKWARD"}
    finally:
        reg.stop()
        db.remove()
