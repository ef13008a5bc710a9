"""compose/: the stack renders, every service is probed and pinned, agentgov containers get only settings
that exist, and secrets live in .env.example as placeholders."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from pipeline.settings import ENV_PREFIX, Settings
from tests.support.compose import BASE, COMPOSE, LAPTOP, env_example, rendered

KNOWN_SETTINGS = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
AGENTGOV_SERVICES = {"topics", "migrate", "scorer", "writer", "demo"}
# Every Kafka client service -> the principal it authenticates as (pipeline/acls.py roles; admin = super user).
KAFKA_CLIENTS = {"scorer": "scorer", "correlator": "correlator", "writer": "store", "review": "review",
                 "demo": "agent", "topics": "admin", "kafka-access": "admin"}


@pytest.fixture(scope="module")
def base() -> dict[str, Any]:
    return rendered(BASE)


@pytest.fixture(scope="module")
def laptop() -> dict[str, Any]:
    return rendered(BASE, LAPTOP)


def test_every_service_has_a_healthcheck(base: dict[str, Any]) -> None:
    missing = [name for name, svc in base["services"].items() if "healthcheck" not in svc]
    assert not missing


def test_images_are_pinned_and_overridable() -> None:
    raw = yaml.safe_load(BASE.read_text())
    images = [svc["image"] for svc in raw["services"].values() if "image" in svc]
    images += [raw["x-kafka"]["image"], raw["x-agentgov"]["image"]]
    for image in images:
        m = re.fullmatch(r"\$\{([A-Z_]+_IMAGE):-([^}]+)\}", image)
        assert m, f"{image}: use ${{X_IMAGE:-repo:tag}}"
        tag = m.group(2).rsplit(":", 1)[-1]
        assert ":" in m.group(2) and tag != "latest" and re.search(r"\d", tag), image
        assert m.group(1) in env_example(), f"{m.group(1)} not in .env.example"


def test_the_registry_is_apicurio_on_a_durable_database(base: dict[str, Any]) -> None:
    # What the Kafka-tier registry tests run (tests/integration/test_registry.py proves the storage
    # settings by starting the registry with them); clients use its Confluent-compatible API.
    svcs = base["services"]
    assert svcs["schema-registry"]["image"].startswith("apicurio/apicurio-registry-sql:")
    assert svcs["schema-registry"]["depends_on"]["registry-db"]["condition"] == "service_healthy"
    assert "registry-db:/var/lib/postgresql/data:rw" in svcs["registry-db"]["volumes"]  # a named volume
    for name in ("scorer", "correlator", "writer", "demo", "review"):
        assert svcs[name]["environment"]["AGENTGOV_SCHEMA_REGISTRY_URL"] == "http://schema-registry:8080/apis/ccompat/v7"
        assert svcs[name]["depends_on"].get("schema-registry", {"condition": "service_healthy"})["condition"] == \
            "service_healthy"


def test_kafka_is_three_kraft_brokers_with_rf3(base: dict[str, Any]) -> None:
    brokers = {n: s for n, s in base["services"].items() if re.fullmatch(r"kafka-\d", n)}
    assert len(brokers) == 3
    for svc in brokers.values():
        env = svc["environment"]
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert str(env["KAFKA_DEFAULT_REPLICATION_FACTOR"]) == "3"
        assert str(env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"]) == "3"
    for name in AGENTGOV_SERVICES:
        assert str(base["services"][name]["environment"]["AGENTGOV_TOPIC_REPLICATION"]) == "3"
    assert base["services"]["scorer"]["deploy"]["replicas"] == 3


def test_laptop_is_one_broker_rf1(laptop: dict[str, Any]) -> None:
    svcs = laptop["services"]
    assert svcs["kafka-1"]["environment"]["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka-1:9093"
    assert svcs["kafka-2"]["profiles"] == svcs["kafka-3"]["profiles"] == ["three-brokers"]
    for name in AGENTGOV_SERVICES:
        env = svcs[name]["environment"]
        assert str(env["AGENTGOV_TOPIC_REPLICATION"]) == "1"
        assert env["AGENTGOV_KAFKA_BOOTSTRAP"] == "kafka-1:9092"
    depends = {dep for svc in svcs.values() for dep in svc.get("depends_on", {})}
    assert not depends & {"kafka-2", "kafka-3"}, "nothing may depend on the brokers the laptop drops"


@pytest.mark.parametrize("variant", ["base", "laptop"])
def test_agentgov_containers_get_only_known_settings(variant: str, request: pytest.FixtureRequest) -> None:
    # Settings rejects unknown AGENTGOV_* variables at start, so a typo here is a crash loop.
    config = request.getfixturevalue(variant)
    for name in AGENTGOV_SERVICES | set(KAFKA_CLIENTS):
        env = config["services"][name]["environment"]
        unknown = {k for k in env if k.startswith(ENV_PREFIX)} - KNOWN_SETTINGS
        assert not unknown, f"{name}: {sorted(unknown)}"
    assert "AGENTGOV_CLICKHOUSE_PASSWORD" not in config["services"]["scorer"]["environment"]


def test_writer_and_migrate_use_different_clickhouse_users(base: dict[str, Any]) -> None:
    writer = base["services"]["writer"]["environment"]
    migrate = base["services"]["migrate"]["environment"]
    assert writer["AGENTGOV_CLICKHOUSE_USERNAME"] == "agentgov_writer"
    assert migrate["AGENTGOV_CLICKHOUSE_USERNAME"] != "agentgov_writer"
    assert base["services"]["writer"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    users = (COMPOSE / "clickhouse" / "users.d" / "agentgov.xml").read_text()
    assert 'from_env="CLICKHOUSE_WRITER_PASSWORD"' in users and 'from_env="CLICKHOUSE_READER_PASSWORD"' in users
    assert "DROP" not in users.upper().replace("NO DROP", "")


def test_every_interpolated_variable_is_in_env_example() -> None:
    used = set()
    for f in (BASE, LAPTOP):
        used |= set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", f.read_text()))
    assert used - set(env_example()) == set()


def test_env_example_holds_placeholders_only() -> None:
    env = env_example()
    for key, value in env.items():
        if any(word in key for word in ("PASSWORD", "SECRET", "TOKEN")):
            assert value.startswith("change-me"), key
        assert not key.startswith(ENV_PREFIX), f"{key}: agentgov would reject it"


def test_mounted_files_exist(base: dict[str, Any]) -> None:
    raw = yaml.safe_load(BASE.read_text())
    for name, svc in raw["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (COMPOSE / source).exists(), f"{name}: {source}"


def test_kafka_authenticates_every_listener_and_denies_without_an_acl(base: dict[str, Any]) -> None:
    for name in ("kafka-1", "kafka-2", "kafka-3"):
        env = base["services"][name]["environment"]
        protocols = {p.split(":")[1] for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")}
        assert protocols == {"SASL_PLAINTEXT"}, f"{name}: an unauthenticated listener"
        assert env["KAFKA_AUTHORIZER_CLASS_NAME"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
        assert str(env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"]) == "false"
        assert env["KAFKA_SUPER_USERS"] == "User:admin"
        assert env["KAFKA_LISTENER_NAME_EXTERNAL_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512"
        assert env["BROKER_ADMIN_PASSWORD"] == env_example()["KAFKA_ADMIN_PASSWORD"]
        assert "PLAINTEXT://" not in env["KAFKA_ADVERTISED_LISTENERS"].replace("SASL_PLAINTEXT://", "")
    script = (COMPOSE / "kafka" / "start.sh").read_text()
    assert "ScramLoginModule" in script and "user_admin=" in script and "${BROKER_RUN:-/etc/kafka/docker/run}" in script


@pytest.mark.parametrize("variant", ["base", "laptop"])
def test_every_kafka_client_authenticates_with_its_own_principal(variant: str, request: pytest.FixtureRequest) -> None:
    config = request.getfixturevalue(variant)
    secrets = env_example()
    for service, principal in KAFKA_CLIENTS.items():
        env = config["services"][service]["environment"]
        assert env["AGENTGOV_KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT", service
        assert env["AGENTGOV_KAFKA_SASL_USERNAME"] == principal, service
        if principal == "admin":
            assert env["AGENTGOV_KAFKA_SASL_MECHANISM"] == "PLAIN", service
            assert env["AGENTGOV_KAFKA_SASL_PASSWORD"] == secrets["KAFKA_ADMIN_PASSWORD"], service
        else:  # its own secret, not another role's
            assert env["AGENTGOV_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512", service
            assert env["AGENTGOV_KAFKA_SASL_PASSWORD"] == secrets[f"SCRAM_PASSWORD_{principal.upper()}"], service
    roles = [p for p in KAFKA_CLIENTS.values() if p != "admin"]
    assert len(roles) == len(set(roles)), "two services share a principal"
    # The registry is no Kafka client: its schemas live in PostgreSQL, under a password of its own.
    registry = config["services"]["schema-registry"]["environment"]
    assert not {k for k in registry if "KAFKA" in k}
    assert registry["REGISTRY_DATASOURCE_PASSWORD"] == secrets["REGISTRY_DB_PASSWORD"]
    assert config["services"]["registry-db"]["environment"]["POSTGRES_PASSWORD"] == secrets["REGISTRY_DB_PASSWORD"]


def test_kafka_access_creates_every_principal_before_the_pipeline_starts(base: dict[str, Any]) -> None:
    from pipeline.acls import ROLES, passwords_from_env

    svcs = base["services"]
    access = svcs["kafka-access"]
    assert access["command"] == ["python", "-m", "consumers.kafka_access"]
    assert set(passwords_from_env(access["environment"])) == set(ROLES)
    for service in ("topics", "scorer", "correlator", "writer"):
        after = svcs[service]["depends_on"]
        assert any(dep == "kafka-access" or svcs[dep].get("depends_on", {}).get("kafka-access") for dep in after), \
            f"{service} may start before its principal exists"
    assert svcs["topics"]["depends_on"]["kafka-access"]["condition"] == "service_completed_successfully"
