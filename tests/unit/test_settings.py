"""Settings: typed parsing from AGENTGOV_* variables, unknown keys rejected with ConfigError."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.runner import settings_env
from pipeline.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("AGENTGOV_"):
            monkeypatch.delenv(key)


def test_defaults() -> None:
    s = Settings.load()
    assert s.starts_embedded_broker and s.bootstrap() == "127.0.0.1:19092"
    assert s.topic_transitions == "agentgov.transitions.v1"
    assert s.session_timeout_ms <= 6000  # Tansu's ceiling
    assert s.instance_id is None and s.require_signatures is False


def test_typed_parsing_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTGOV_TOPIC_PARTITIONS", "12")
    monkeypatch.setenv("AGENTGOV_BATCH_MAX_SECONDS", "0.05")
    monkeypatch.setenv("AGENTGOV_REQUIRE_SIGNATURES", "true")
    monkeypatch.setenv("AGENTGOV_SIGNING_KEYS", '{"k1": "secret-1", "k2": "secret-2"}')
    monkeypatch.setenv("AGENTGOV_KAFKA_EXTRA", '{"socket.keepalive.enable": "true"}')
    monkeypatch.setenv("AGENTGOV_POLICY_FILE", "/etc/agentgov/policy.yaml")
    monkeypatch.setenv("AGENTGOV_LOG_LEVEL", "debug")
    monkeypatch.setenv("AGENTGOV_INSTANCE_ID", "scorer-3")
    s = Settings.load()
    assert s.topic_partitions == 12 and s.batch_max_seconds == 0.05 and s.require_signatures is True
    assert {k: v.get_secret_value() for k, v in s.signing_keys.items()} == {"k1": "secret-1", "k2": "secret-2"}
    assert s.kafka_config()["socket.keepalive.enable"] == "true"
    assert s.policy_file == Path("/etc/agentgov/policy.yaml") and s.log_level == "DEBUG"
    assert s.instance_id == "scorer-3"


def test_unknown_env_key_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTGOV_KAFKA_BOOTSTRAPP", "typo:9092")
    with pytest.raises(ConfigError) as caught:
        Settings.load()
    assert "AGENTGOV_KAFKA_BOOTSTRAPP (did you mean AGENTGOV_KAFKA_BOOTSTRAP?)" in caught.value.message


def test_unknown_env_key_without_a_close_name_is_named_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTGOV_FOO", "1")
    with pytest.raises(ConfigError) as caught:
        Settings.load()
    assert "unknown setting in the environment: AGENTGOV_FOO;" in caught.value.message
    assert "did you mean" not in caught.value.message


def test_invalid_values_name_the_variable_but_never_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTGOV_TOPIC_PARTITIONS", "s3cr3t-looking")
    with pytest.raises(ConfigError) as caught:
        Settings.load()
    assert "AGENTGOV_TOPIC_PARTITIONS" in caught.value.message and "s3cr3t" not in caught.value.message


def test_unknown_keyword_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        Settings.load(kafka_bootstrapp="x")


@pytest.mark.parametrize(("name", "value"), [
    ("AGENTGOV_TOPIC_PARTITIONS", "0"),
    ("AGENTGOV_TOPIC_PARTITIONS", "six"),
    ("AGENTGOV_KAFKA_SECURITY_PROTOCOL", "TLS"),
    ("AGENTGOV_LOG_LEVEL", "LOUD"),
    ("AGENTGOV_METRICS_PORT", "70000"),
    ("AGENTGOV_MAX_MESSAGE_BYTES", "10"),
    ("AGENTGOV_INSTANCE_ID", "scorer 0; rm -rf"),
    ("AGENTGOV_SIGNING_KEYS", "not json"),
])
def test_bad_values_are_config_errors(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError):
        Settings.load()


def test_child_process_env_round_trips() -> None:
    """What the runner hands its scorer subprocesses rebuilds the same settings (secrets included)."""
    s = Settings.load(kafka_bootstrap="b:9092", clickhouse_password="pw", signing_keys={"k": "v"},
                      require_signatures=True, kafka_extra={"a": "b"})
    env = settings_env(s)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        again = Settings.load()
    assert again.model_dump() == s.model_dump()
    assert again.clickhouse_password is not None and again.clickhouse_password.get_secret_value() == "pw"
    assert again.signing_keys["k"].get_secret_value() == "v"


def test_settings_are_frozen() -> None:
    s = Settings.load()
    with pytest.raises(ValueError):
        s.topic_partitions = 3  # type: ignore[misc]


def test_max_poll_interval_reaches_every_consumer_and_no_producer(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings.load().consumer_config("g")["max.poll.interval.ms"] == 300_000  # librdkafka's default
    monkeypatch.setenv("AGENTGOV_MAX_POLL_INTERVAL_SECONDS", "900")
    s = Settings.load()
    assert s.consumer_config("g")["max.poll.interval.ms"] == 900_000
    assert "max.poll.interval.ms" not in s.kafka_config()


@pytest.mark.parametrize(("env", "said"), [
    ({"AGENTGOV_MAX_POLL_INTERVAL_SECONDS": "3"},
     "AGENTGOV_MAX_POLL_INTERVAL_SECONDS=3 is shorter than AGENTGOV_SESSION_TIMEOUT_MS=6000"),
    ({"AGENTGOV_KAFKA_EXTRA": '{"max.poll.interval.ms": "900000"}'},
     "AGENTGOV_KAFKA_EXTRA sets max.poll.interval.ms: set AGENTGOV_MAX_POLL_INTERVAL_SECONDS instead"),
    ({"AGENTGOV_MAX_EVENT_AGE_DAYS": "500", "AGENTGOV_RETENTION_DAYS": "400"},
     "AGENTGOV_MAX_EVENT_AGE_DAYS=500 exceeds AGENTGOV_RETENTION_DAYS=400"),
])
def test_checks_across_settings_name_their_variables(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                                     said: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        Settings.load()
    assert caught.value.message.startswith("invalid settings: ") and said in caught.value.message
    assert "AGENTGOV_?" not in caught.value.message
    assert "Value error" not in caught.value.message


def test_a_bench_worker_builds_the_same_settings_secrets_included(monkeypatch: pytest.MonkeyPatch) -> None:
    """The benchmark hands its workers their settings in a spec file: a secret written masked (``**********``)
    made the worker's clients fail on a SASL password or an AGENTGOV_KAFKA_EXTRA value."""
    from bench.__main__ import settings_doc

    monkeypatch.setenv("AGENTGOV_KAFKA_EXTRA", '{"queued.max.messages.kbytes": "8192"}')
    s = Settings.load(kafka_sasl_password="s3cret", kafka_sasl_username="bench")
    again = Settings.load(**settings_doc(s))
    assert again.kafka_config() == s.kafka_config()
    assert again.kafka_config()["queued.max.messages.kbytes"] == "8192"
    assert again.kafka_config()["sasl.password"] == "s3cret"
