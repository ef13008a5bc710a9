"""Secrets stay secret (repr, logs, /metrics, child-process logs) and TLS/SASL settings reach the clients."""

from __future__ import annotations

import io
import logging
import os
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from pipeline.logs import JsonFormatter, LogfmtFormatter, configure_logging
from pipeline.metrics import Metrics
from pipeline.settings import Settings

SECRETS = {
    "kafka_sasl_password": "kafka-pw-Zq81!",
    "kafka_ssl_key_password": "key-pw-Lm22?",
    "clickhouse_password": "ch-pw-Vx93#",
    "schema_registry_basic_auth": "user:sr-pw-Pp07$",
}
SIGNING = {"agent-key-2026": "hmac-key-Tt55%"}


@pytest.fixture
def secret_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in list(os.environ):
        if key.startswith("AGENTGOV_"):
            monkeypatch.delenv(key)
    return Settings.load(
        kafka_bootstrap="broker-1:9093", kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="agentgov-writer", kafka_ssl_ca_location=Path("/etc/agentgov/ca.pem"),
        kafka_ssl_certificate_location=Path("/etc/agentgov/client.pem"),
        kafka_ssl_key_location=Path("/etc/agentgov/client.key"),
        clickhouse_dsn="https://ch.internal:8443", clickhouse_username="agentgov_writer",
        clickhouse_ca_cert=Path("/etc/agentgov/ch-ca.pem"), signing_keys=SIGNING, require_signatures=True,
        **SECRETS,
    )


def leaked(text: str) -> list[str]:
    values = [*SECRETS.values(), *SIGNING.values(), "sr-pw-Pp07$"]
    return [v for v in values if v in text]


def test_secrets_not_in_repr_str_or_dump(secret_settings: Settings) -> None:
    for text in (repr(secret_settings), str(secret_settings), secret_settings.model_dump_json(),
                 str(secret_settings.model_dump())):
        assert leaked(text) == []
    assert "**********" in repr(secret_settings)


def test_secrets_not_in_logs(secret_settings: Settings) -> None:
    for formatter in (LogfmtFormatter(), JsonFormatter()):
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter)
        log = logging.getLogger(f"agentgov.test.{id(formatter)}")
        log.addHandler(handler)
        log.setLevel(logging.DEBUG)
        log.info("settings loaded", extra={"kv": {"settings": secret_settings,
                                                   "sasl": secret_settings.kafka_sasl_password,
                                                   "keys": secret_settings.signing_keys}})
        log.info("settings %r", secret_settings)
        try:
            raise RuntimeError(f"connect failed for {secret_settings!r}")
        except RuntimeError:
            log.exception("boom")
        text = stream.getvalue()
        assert "settings loaded" in text and leaked(text) == []


def test_configure_logging_installs_once_and_leaks_nothing(secret_settings: Settings,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers.clear()
    try:
        configure_logging("DEBUG", "logfmt")
        configure_logging("DEBUG", "json")  # leaves the existing handler alone
        assert len(root.handlers) == 1
        logging.getLogger("pipeline.test").info("starting", extra={"kv": {"settings": secret_settings}})
        err = capsys.readouterr().err
        assert "starting" in err and leaked(err) == []
    finally:
        root.handlers[:] = saved


def test_secrets_not_in_metrics(secret_settings: Settings) -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.policy_info.labels(role="scorer").info({"version": "7", "sha256": "ab" * 32})
    metrics.sink_errors.labels(table="ingest", kind="OperationalError").inc()
    text = generate_latest(metrics.registry).decode()
    assert leaked(text) == []


def test_kafka_sasl_ssl_and_mtls_pass_through(secret_settings: Settings) -> None:
    conf = secret_settings.kafka_config()
    assert conf["bootstrap.servers"] == "broker-1:9093"
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert conf["sasl.username"] == "agentgov-writer"
    assert conf["sasl.password"] == SECRETS["kafka_sasl_password"]
    assert conf["ssl.ca.location"] == "/etc/agentgov/ca.pem"
    assert conf["ssl.certificate.location"] == "/etc/agentgov/client.pem"
    assert conf["ssl.key.location"] == "/etc/agentgov/client.key"
    assert conf["ssl.key.password"] == SECRETS["kafka_ssl_key_password"]
    consumer = secret_settings.consumer_config("g")
    assert consumer["security.protocol"] == "SASL_SSL" and consumer["ssl.ca.location"] == "/etc/agentgov/ca.pem"


def test_mtls_without_sasl() -> None:
    conf = Settings.load(kafka_bootstrap="b:9093", kafka_security_protocol="SSL",
                         kafka_ssl_ca_location=Path("/ca"), kafka_ssl_certificate_location=Path("/crt"),
                         kafka_ssl_key_location=Path("/key")).kafka_config()
    assert conf["security.protocol"] == "SSL"
    assert {k for k in conf if k.startswith("sasl.")} == set()
    assert (conf["ssl.ca.location"], conf["ssl.certificate.location"], conf["ssl.key.location"]) == \
        ("/ca", "/crt", "/key")


def test_clickhouse_tls_pass_through(secret_settings: Settings) -> None:
    kw = secret_settings.clickhouse_kwargs()
    assert kw == {"dsn": "https://ch.internal:8443", "username": "agentgov_writer",
                  "password": SECRETS["clickhouse_password"], "verify": True, "ca_cert": "/etc/agentgov/ch-ca.pem"}
    insecure = Settings.load(clickhouse_dsn="https://ch:8443", clickhouse_verify_tls=False).clickhouse_kwargs()
    assert insecure["verify"] is False
    assert "verify" not in Settings.load(clickhouse_dsn="http://ch:8123").clickhouse_kwargs()


def test_signing_keys_are_secret_and_rotatable(secret_settings: Settings) -> None:
    rotated = secret_settings.model_copy(update={"signing_keys": {
        **secret_settings.signing_keys, "agent-key-2027": type(secret_settings.signing_keys["agent-key-2026"])("k2")}})
    assert set(rotated.signing_keys) == {"agent-key-2026", "agent-key-2027"}  # old and new accepted together
    assert leaked(repr(rotated)) == []


URL_SECRETS = {
    "AGENTGOV_CLICKHOUSE_DSN": "http://alice:ch-url-pw-Kk12@127.0.0.1:1/agentgov",
    "AGENTGOV_SCHEMA_REGISTRY_URL": "https://bob:sr-url-pw-Jj34@registry.example:8081",
    "AGENTGOV_KAFKA_EXTRA": '{"sasl.oauthbearer.client.secret": "extra-pw-Hh56"}',
}


@pytest.fixture
def url_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in list(os.environ):
        if key.startswith("AGENTGOV_"):
            monkeypatch.delenv(key)
    for key, value in URL_SECRETS.items():
        monkeypatch.setenv(key, value)
    return Settings()


def test_credentials_in_urls_and_kafka_extra_move_into_secrets(url_settings: Settings) -> None:
    shown = repr(url_settings) + str(url_settings) + url_settings.model_dump_json()
    for word in ("ch-url-pw-Kk12", "sr-url-pw-Jj34", "extra-pw-Hh56"):
        assert word not in shown
    assert url_settings.clickhouse_dsn == "http://127.0.0.1:1/agentgov"  # what the start-up line prints
    assert url_settings.schema_registry_url == "https://registry.example:8081"
    # ... and still reach the clients
    assert url_settings.clickhouse_kwargs()["password"] == "ch-url-pw-Kk12"
    assert url_settings.clickhouse_kwargs()["username"] == "alice"
    assert url_settings.schema_registry_basic_auth is not None
    assert url_settings.schema_registry_basic_auth.get_secret_value() == "bob:sr-url-pw-Jj34"
    assert url_settings.kafka_config()["sasl.oauthbearer.client.secret"] == "extra-pw-Hh56"


def test_sink_error_text_holds_no_credentials(url_settings: Settings) -> None:
    from pipeline.errors import SinkError
    from pipeline.sinks.clickhouse import connect

    with pytest.raises(SinkError) as caught:
        connect(url_settings)
    text = str(caught.value) + repr(caught.value.fields)
    assert "ch-url-pw-Kk12" not in text and "127.0.0.1:1" in text


@pytest.mark.parametrize(("url", "bare", "user", "password"), [
    # generated passwords hold unencoded '/', '?', '#', '@': the user info runs to the last '@'
    ("http://writer:Zk3/9qT+S3CRET@127.0.0.1:1", "http://127.0.0.1:1", "writer", "Zk3/9qT+S3CRET"),
    ("http://w:a?b#c/d@ch:8123/db?x=1", "http://ch:8123/db?x=1", "w", "a?b#c/d"),
    ("https://bob:p@ss@registry:8081", "https://registry:8081", "bob", "p@ss"),
    ("http://al%40ce:p%2Fw@ch:8123", "http://ch:8123", "al@ce", "p/w"),
    ("http://u@ch", "http://ch", "u", None),
    # no user info: unchanged (an '@' in a path or query is written %40; a "user" with '/' is a path)
    ("http://ch:8123/db", "http://ch:8123/db", None, None),
    ("http://ch/db?e=a%40b", "http://ch/db?e=a%40b", None, None),
    ("http://ch/db?e=a@b", "http://ch/db?e=a@b", None, None),
    ("chdb:///var/lib/agentgov", "chdb:///var/lib/agentgov", None, None),
])
def test_split_credentials(url: str, bare: str, user: str | None, password: str | None) -> None:
    from pipeline.settings import split_credentials

    assert split_credentials(url) == (bare, user, password)


def test_a_password_with_a_slash_moves_into_secrets_and_no_error_shows_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.errors import SinkError
    from pipeline.sinks.clickhouse import connect

    for key in list(os.environ):
        if key.startswith("AGENTGOV_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AGENTGOV_CLICKHOUSE_DSN", "http://writer:Zk3/9qT+S3CRET@127.0.0.1:1")
    monkeypatch.setenv("AGENTGOV_SCHEMA_REGISTRY_URL", "https://bob:Rr/5?x#S3CRET@registry.example:8081")
    settings = Settings()
    assert settings.clickhouse_dsn == "http://127.0.0.1:1"
    assert settings.clickhouse_kwargs()["password"] == "Zk3/9qT+S3CRET"
    assert settings.schema_registry_url == "https://registry.example:8081"
    assert settings.schema_registry_basic_auth is not None
    assert settings.schema_registry_basic_auth.get_secret_value() == "bob:Rr/5?x#S3CRET"
    assert "S3CRET" not in repr(settings) + settings.model_dump_json()
    with pytest.raises(SinkError) as caught:
        connect(settings)
    assert "S3CRET" not in str(caught.value) + repr(caught.value.fields)


def test_redaction_is_linear_and_a_log_value_is_cut() -> None:
    """A forged record's field quoted in a log line: the redaction took the square of its length (4.3 s for
    128 KB of ``a://``, minutes for a megabyte, on every line about the record), and the whole field was
    written. A megabyte now takes milliseconds (2 s is the bound: 500 times the time measured), a run with
    no scheme name before ``://`` is redacted too, and a line's value is cut with the count of the rest."""
    from pipeline.logs import VALUE_MAX_CHARS
    from pipeline.settings import redact_urls

    hostile = "@" + "a://" * 250_000
    started = time.process_time()
    assert redact_urls(hostile) == hostile  # no ``@`` after a ``://``: nothing to hide
    assert redact_urls("x " + "a." * 500_000 + "://u:p@h") == "x " + "a." * 500_000 + "://***@h"
    assert time.process_time() - started < 2.0
    assert redact_urls("k=1a://u:S3CRET@h ://v:S3CRET@h") == "k=1a://***@h ://***@h"
    record = logging.LogRecord("t", logging.WARNING, __file__, 1, "paged", None, None)
    record.kv = {"run_id": "r" * 300_000, "runs": ["s" * 300_000]}
    for formatter in (LogfmtFormatter(), JsonFormatter()):
        line = formatter.format(record)
        assert len(line) < 3 * VALUE_MAX_CHARS + 1_000, len(line)
        assert f"(+{300_000 - VALUE_MAX_CHARS} chars)" in line


def test_errors_and_logs_redact_user_info_of_any_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defence in depth: a URL still holding credentials (here set past the settings' validators) never
    shows them in the store's errors, the CLI's error line or a log line."""
    from pipeline.errors import SinkError
    from pipeline.failures import explain
    from pipeline.settings import redact_urls
    from pipeline.sinks.clickhouse import connect

    assert redact_urls("at http://u:p/w@h:1/db and https://x:y@z@h2 ok") == "at http://***@h:1/db and https://***@h2 ok"
    assert redact_urls("mail a@b, url http://h/x") == "mail a@b, url http://h/x"
    raw = Settings.load().model_copy(update={"clickhouse_dsn": "http://writer:Zk3/9qT+S3CRET@127.0.0.1:1"})
    with pytest.raises(SinkError) as caught:
        connect(raw)
    assert "S3CRET" not in str(caught.value) + repr(caught.value.fields) and "127.0.0.1:1" in str(caught.value)
    assert "S3CRET" not in explain(RuntimeError("GET http://u:S3CRET/x@h failed")).text()
    record = logging.LogRecord("t", logging.ERROR, __file__, 1, "to http://u:S3CRET/x@h", None, None)
    record.kv = {"dsn": "http://u:S3CRET/x@h:1"}
    for formatter in (LogfmtFormatter(), JsonFormatter()):
        line = formatter.format(record)
        assert "S3CRET" not in line and "http://***@h:1" in line, line
