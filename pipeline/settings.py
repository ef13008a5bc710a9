"""Typed settings: one object per process, built in ``main()`` from ``AGENTGOV_*`` environment variables.

Example::

    settings = Settings()                       # reads AGENTGOV_* from the environment
    producer = Producer(settings.kafka_config())
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import ConfigError

ENV_PREFIX = "AGENTGOV_"


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """(url without user info, user, password) of ``scheme://user:password@host...``; unchanged otherwise.

    The user info is everything before the *last* ``@``: generated passwords often hold an unencoded
    ``/``, ``?`` or ``#``, and cutting the authority at the first of those would leave such a password in
    the URL that logs and errors print. So an ``@`` in a path or query must be written ``%40``. A user
    name holding ``/``, ``?`` or ``#`` is not one: the ``@`` then belongs to the path or query."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url, None, None
    userinfo, at, host = rest.rpartition("@")
    if not at:
        return url, None, None
    user, colon, password = userinfo.partition(":")
    if any(c in user for c in "/?#"):
        return url, None, None
    return f"{scheme}://{host}", unquote(user) or None, unquote(password) if colon else None


RECEIVE_MESSAGE_MAX_BYTES = 2_147_483_647
"""librdkafka's ``receive.message.max.bytes`` for every agentgov client: its maximum. A broker that caps
records (Kafka's ``message.max.bytes``, 1 MB by default) never sends more than its cap; Tansu 0.6 caps
nothing, and with librdkafka's default (100 MB) one larger record made every fetch of its partition fail
("Invalid response size") for good, so nothing after it was scored and it was never dead-lettered. Read
whole, it is dead-lettered as ``oversized`` with its payload cut (pipeline/limits.py). The memory is
taken only while such a response is read."""

_TOKEN = re.compile(r"\S+")


def revealed(value: Any) -> Any:
    """A setting's value with its secrets as they are (a ``SecretStr``, or a dict of them): what a child process
    is handed to build the same settings (``runner.settings_env``; the benchmark's worker specs)."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {k: v.get_secret_value() if isinstance(v, SecretStr) else v for k, v in value.items()}
    return value


def redact_urls(text: str) -> str:
    """``text`` with the user info of every URL in it replaced by ``***`` (up to the last ``@`` of the URL).

    Defence in depth for errors and logs: settings move credentials out of URLs, but a URL that reaches a
    message some other way (a client library's error, a hand-built string) still shows no password.

    Linear in ``text``: each whitespace-free run is cut from its first ``://`` to its last ``@``. Until
    session 26 it was one regular expression, ``\\b([a-z][a-z0-9+.-]*://)\\S*@``, which took the square of
    the length on a run like ``@a://a://…`` (4.3 s for 128 KB); every log value passes through here, and a
    forged fact's 160 KB run id in a log line held a correlator for 7 s. A run without a scheme name before
    its ``://`` is cut too: more is hidden, never less."""
    if "://" not in text or "@" not in text:
        return text
    return _TOKEN.sub(_redact_token, text)


def _redact_token(m: re.Match[str]) -> str:
    token = m.group()
    start = token.find("://")
    if start < 0:
        return token
    at = token.rfind("@")
    if at < start + 3:
        return token
    return f"{token[:start + 3]}***{token[at:]}"


def unknown_env_message(cls: type[BaseSettings]) -> str:
    """One sentence naming every unknown ``AGENTGOV_*`` environment variable, with the closest valid name."""
    known = sorted(name.upper() for name in cls.model_fields)
    unknown = sorted(k for k in os.environ
                     if k.upper().startswith(ENV_PREFIX) and k.upper()[len(ENV_PREFIX):] not in known)
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(name.upper()[len(ENV_PREFIX):], known, n=1, cutoff=0.7)
        parts.append(f"{name} (did you mean {ENV_PREFIX}{close[0]}?)" if close else name)
    if not parts:
        return ""
    many = len(parts) > 1
    return (f"unknown setting{'s' if many else ''} in the environment: {', '.join(parts)}; "
            f"unset {'them' if many else 'it'} or fix the name (valid names: README.md, Configuration)")


class Settings(BaseSettings):
    """Every knob of an agentgov process. Unknown ``AGENTGOV_*`` variables are rejected."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    # --- Kafka -----------------------------------------------------------------------------
    kafka_bootstrap: str | None = Field(
        default=None, description="Kafka bootstrap servers; unset means start the embedded Tansu broker."
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_ca_location: Path | None = None
    kafka_ssl_certificate_location: Path | None = None
    kafka_ssl_key_location: Path | None = None
    kafka_ssl_key_password: SecretStr | None = None
    kafka_extra: dict[str, SecretStr] = Field(
        default_factory=dict, description="Raw librdkafka overrides (values kept secret: they may hold passwords).")
    embedded_broker: Literal["tansu", "kafka"] = Field(
        default="tansu",
        description="Engine `agentgov run` starts when AGENTGOV_KAFKA_BOOTSTRAP is unset: tansu (in-memory, no "
                    "Java) or kafka (Apache Kafka KRaft, one node, durable log under embedded_kafka_dir; Java 17).")
    embedded_broker_port: int = 19092
    embedded_kafka_dir: Path | None = Field(
        default=None, description="Log of the embedded Kafka node (default: <state_dir>/kafka).")

    schema_registry_url: str | None = Field(
        default=None, description="Confluent-compatible registry; unset means Avro single-object encoding."
    )
    schema_registry_basic_auth: SecretStr | None = None
    schema_registry_timeout_seconds: float = Field(
        default=5.0, gt=0, description="Per request to the registry; without one a hung registry hangs its callers.")
    schema_registry_wait_seconds: float = Field(
        default=60.0, ge=0, description="How long a publisher retries registering its schema while the registry "
                                        "does not answer, before raising PublishError (nothing is sent).")

    topic_transitions: str = "agentgov.transitions.v1"
    topic_assessments: str = "agentgov.assessments.v1"
    topic_dlq: str = "agentgov.transitions.dlq"
    topic_baselines: str = "agentgov.baselines.v1"
    topic_decisions: str = "agentgov.decisions.v1"
    topic_exceptions: str = "agentgov.exceptions.v1"
    topic_remediations: str = "agentgov.remediations.v1"
    topic_partitions: int = Field(default=6, ge=1)
    # Entity-keyed topics of the correlation stage (public topology: pinned names).
    topic_facts_by_target: str = "agentgov.facts.by-target.v1"
    topic_facts_by_agent: str = "agentgov.facts.by-agent.v1"
    topic_holdings: str = "agentgov.holdings.v1"
    topic_delegations: str = "agentgov.delegations.v1"
    topic_correlations: str = "agentgov.correlations.v1"
    facts_partitions: int = Field(
        default=6, ge=1, description="Partitions of the by-target, by-agent and holdings topics; the correlator "
                                     "group scales up to this many replicas. Fixed once data exists (keys map "
                                     "to partitions by crc32(key) mod this).")
    access_facts: bool = Field(default=True, description="Scorers emit access facts for the correlator.")
    topic_replication: int = Field(default=1, ge=1)

    scorer_group: str = "agentgov-scorer"
    writer_group: str = "agentgov-writer"
    correlator_group: str = "agentgov-correlator"
    correlation_grace_seconds: float = Field(
        default=300.0, ge=0, description="How long the correlator waits for late facts before evaluating a key "
                                         "in event-time order.")
    correlation_retain_seconds: int = Field(
        default=7200, ge=60, description="Event time a correlator keeps (and replays) per key; at least the "
                                         "policy's escalation and rate windows.")
    instance_id: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="Stable name of this process slot (e.g. scorer-0). A scorer derives its transactional.id "
                    "from it, so a restarted scorer fences its crashed predecessor's open transaction at once.")
    session_timeout_ms: int = Field(default=6000, ge=1000)
    max_poll_interval_seconds: float = Field(
        default=300.0, ge=1, le=86400,
        description="librdkafka max.poll.interval.ms of every agentgov consumer, in seconds (librdkafka's "
                    "default), also the group's rebalance timeout. A scorer or correlator rebuilds its state "
                    "inside the assign callback with its partitions already taken, where it does not run; after "
                    "an aborted batch it rebuilds between two polls, where one longer than this leaves the "
                    "group. Raise it above the longest rebuild (docs/guarantees.md, \"A correlator rebuilds "
                    "its whole window\"). At least session_timeout_ms.")
    stall_seconds: float = Field(
        default=120.0, ge=0,
        description="A scorer or correlator that owns a partition with records waiting, and has been delivered "
                    "nothing of it for this long (and a quarter of it more, at the same place), exits with code 75 "
                    "so its supervisor starts a fresh group member (pipeline/liveness.py). Longer than any "
                    "producer's transaction.timeout.ms on the input topics (agentgov's: 60 s); 0 disables.")
    batch_max_messages: int = Field(default=2000, ge=1)
    batch_max_seconds: float = Field(default=0.2, gt=0)
    fetch_wait_max_ms: int = Field(
        default=100, ge=0, le=5000,
        description="librdkafka fetch.wait.max.ms of every agentgov consumer: how long a broker may hold a fetch "
                    "that has not reached fetch.min.bytes. Each hop of the pipeline (transitions -> scorer -> "
                    "facts -> correlator -> page) can wait this long; librdkafka's 500 ms default put ~0.5 s on "
                    "each hop on a broker that holds fetches to the limit.")
    fetch_min_bytes: int = Field(
        default=16384, ge=1, le=1_048_576,
        description="librdkafka fetch.min.bytes of every agentgov consumer: a broker answers a fetch once this "
                    "much is ready, or after fetch_wait_max_ms. With librdkafka's 1 byte a consumer of a steady "
                    "stream fetched back to back, a few records a request, and requests, not records, are what "
                    "cost a broker CPU (Tansu: about 0.5 ms each): 16384 cut Tansu's CPU and the correlator's "
                    "time to page in the benchmark (docs/performance.md). Below ~16 KB per fetch_wait_max_ms "
                    "(a few hundred events/s) each hop waits up to that; set 1 to never wait.")
    max_message_bytes: int = Field(
        default=1_000_000, ge=4096,
        description="Largest Kafka record any agentgov producer sends (librdkafka message.max.bytes); an event "
                    "may use this minus a head room for its assessment and dead-letter headers (pipeline/limits.py).")
    max_future_skew_seconds: int = Field(default=300, ge=0)
    max_event_age_days: int | None = Field(
        default=None, ge=1,
        description="Events older than this are dead-lettered, not scored; unset means retention_days. May not "
                    "exceed retention_days: the store keeps an event's id (first copy wins) retention_days and a "
                    "day after storing it, so a later copy repeating the original's occurred_at is refused here.")
    backdated_hours: float = Field(
        default=24.0, ge=0,
        description="A scorer counts an access change whose occurred_at is more than this before its record's "
                    "timestamp on the transitions topic in agentgov_backdated_access_changes_total (0: off). The "
                    "store keeps such an event retention_days from storing it, but it lands among old days in "
                    "time-ranged reads. The timestamp is the producer's clock (CreateTime) unless the topic uses "
                    "LogAppendTime.")
    context_window_seconds: int = Field(default=3600, ge=0, description="How far back a scorer replays.")
    context_max_keys: int = Field(
        default=4000, ge=100,
        description="Runs, targets and agents a scorer remembers per partition (LRU); memory is about 4 KB "
                    "per remembered event, so this bounds a scorer's resident size.")

    context_max_bytes: int = Field(
        default=128 * 1024 * 1024, ge=1024 * 1024,
        description="Approximate bytes of events a scorer remembers per owned partition (least recently used "
                    "runs/targets/agents go first); with context_max_keys, this bounds a scorer's resident size.")

    # --- ClickHouse --------------------------------------------------------------------------
    clickhouse_dsn: str = Field(default="chdb://.agentgov/chdb", description="chdb:///path or http(s)://host:8123")
    clickhouse_database: str = "agentgov"
    clickhouse_username: str | None = None
    clickhouse_password: SecretStr | None = None
    clickhouse_verify_tls: bool = True
    clickhouse_ca_cert: Path | None = None
    clickhouse_cluster: str | None = Field(default=None, description="Use Replicated/Distributed DDL on this cluster.")
    clickhouse_migrate_on_start: bool = Field(
        default=True, description="Writer applies migrations at start; false lets it run with INSERT-only rights.")
    retention_days: int = Field(
        default=400, ge=1,
        description="Days the store keeps a row after it stored it (TTL on greatest(occurred_at, stored_at), "
                    "migration 007: never counted from the agent's occurred_at alone); access_changes has no TTL.")
    writer_batch_rows: int = Field(default=20000, ge=1)
    writer_batch_seconds: float = Field(default=0.5, gt=0)
    baseline_refresh_seconds: float = Field(default=60.0, gt=0, description="Writer republishes baselines every N s.")

    # --- Governance ----------------------------------------------------------------------------
    policy_file: Path | None = Field(default=None, description="Governance policy YAML; unset uses the default.")
    policy_reload_seconds: float = Field(default=2.0, gt=0, description="How often scorers check the file.")
    signing_keys: dict[str, SecretStr] = Field(default_factory=dict, description="key_id -> HMAC key.")
    require_signatures: bool = False
    signing_key_agents: dict[str, list[str]] = Field(
        default_factory=dict,
        description="key_id -> agent_id patterns (fnmatch, e.g. agent-jml-*) the key may sign for. When set, a "
                    "valid signature by a key not registered for the event's agent is AG-EVD-007. An identity "
                    "matching a pattern is an agent to the delegation graph whatever an event labels it.")

    schema_dir: Path | None = Field(default=None, description="Where schemas/*.avsc live (default: beside pipeline/).")

    # --- Review workbench (docs/review.md) ---------------------------------------------------
    review_addr: str = "127.0.0.1"
    review_port: int = Field(default=8088, ge=0, le=65535)
    review_auth: Literal["token", "proxy"] = Field(
        default="token", description="token: bearer tokens / login form (local, tests); proxy: trust the "
                                     "identity headers of an authenticating proxy at review_trusted_proxies.")
    review_tokens: dict[str, SecretStr] = Field(default_factory=dict, description="user -> login token (token mode).")
    review_users: dict[str, list[str]] = Field(default_factory=dict, description="user -> roles (token mode).")
    review_trusted_proxies: list[str] = Field(
        default_factory=lambda: ["127.0.0.1/32", "::1/128"],
        description="Addresses (CIDR) whose identity headers are trusted (proxy mode); others get 401.")
    review_user_header: str = "X-Forwarded-User"
    review_groups_header: str = "X-Forwarded-Groups"
    review_group_roles: dict[str, str] = Field(
        default_factory=lambda: {"agentgov-reviewers": "reviewer", "agentgov-approvers": "approver",
                                 "agentgov-auditors": "auditor"},
        description="Proxy group -> role (reviewer, approver, auditor).")
    review_secret: SecretStr | None = Field(
        default=None, description="Key for session cookies and CSRF tokens; unset draws a random one per start.")
    review_store_wait_seconds: float = Field(
        default=15.0, gt=0, description="How long a write waits to see its decision stored before answering 503.")
    review_session_max_age_seconds: int = Field(
        default=8 * 3600, ge=60, le=30 * 86400,
        description="Lifetime of a login session (token mode): the signed cookie carries its issue time and is "
                    "refused after this, and the browser is told to drop it (Max-Age).")
    review_max_body_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024,
        description="Largest request body the review app reads (bytes); a larger one gets 413, checked on "
                    "Content-Length and on the bytes streamed. 4 MiB holds the largest bulk decision.")
    review_cookie_secure: bool = Field(
        default=False,
        description="Mark the session cookie Secure (sent over HTTPS only) whatever the scheme the app sees. "
                    "A request the app itself receives over HTTPS always gets a Secure cookie; set this when "
                    "TLS ends at a proxy in front of the app, which then sees plain HTTP.")
    review_login_max_failures: int = Field(
        default=10, ge=1, le=10_000,
        description="Failed logins (a wrong token at /login or as a bearer token, token mode) one client address "
                    "may make within review_login_window_seconds; after that it gets 429 with Retry-After "
                    "until the oldest of them is a window old.")
    review_login_window_seconds: float = Field(
        default=300.0, gt=0, le=86_400, description="The window review_login_max_failures counts in (seconds).")
    review_client_address_header: str | None = Field(
        default=None, min_length=1, max_length=64,
        description="Token mode behind a TLS-ending proxy: the header that proxy sets to the client's address "
                    "(X-Forwarded-For). From a peer in review_trusted_proxies, the rightmost address in it that is "
                    "not itself a trusted proxy is the client, for the failed-login throttle and the logs (the "
                    "entries left of it are whatever the client sent). Unset, or from any other peer: the TCP "
                    "peer, so behind a proxy every client shares the proxy's address and its failed logins.")
    review_login_max_addresses: int = Field(
        default=10_000, ge=1, le=10_000_000,
        description="Client addresses whose failed logins are remembered at once (bounded memory); the one "
                    "whose last failure is oldest is forgotten first.")
    review_metrics_refresh_seconds: float = Field(
        default=15.0, ge=0, le=3600,
        description="Least time between two reads of the store for the review gauges on /metrics; a scrape "
                    "in between is answered from the last read. /metrics needs no login, so this bounds "
                    "what anyone who can reach it makes the store do. 0 reads on every scrape.")

    # --- Process -----------------------------------------------------------------------------
    metrics_port: int = Field(default=9464, ge=0, le=65535)
    metrics_addr: str = "127.0.0.1"
    log_level: str = "INFO"
    log_format: Literal["logfmt", "json"] = "logfmt"
    state_dir: Path = Path(".agentgov")

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        v = v.upper()
        if v not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(f"unknown log level {v!r}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_env(cls, data: Any) -> Any:
        problem = unknown_env_message(cls)
        if problem:
            raise ValueError(problem)
        return data

    @model_validator(mode="before")
    @classmethod
    def _credentials_out_of_urls(cls, data: Any) -> Any:
        """Credentials written into a URL move to their SecretStr fields, so the URL left behind (shown in
        logs, errors and the start-up line) holds none: ``http://u:p@host:8123`` becomes ``http://host:8123``
        plus ``clickhouse_username``/``clickhouse_password``; a registry URL's go to
        ``schema_registry_basic_auth``."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        dsn = data.get("clickhouse_dsn")
        if isinstance(dsn, str):
            bare, user, password = split_credentials(dsn)
            if user is not None or password is not None:
                data["clickhouse_dsn"] = bare
                if user and data.get("clickhouse_username") is None:
                    data["clickhouse_username"] = user
                if password is not None and data.get("clickhouse_password") is None:
                    data["clickhouse_password"] = password
        url = data.get("schema_registry_url")
        if isinstance(url, str):
            bare, user, password = split_credentials(url)
            if user is not None or password is not None:
                data["schema_registry_url"] = bare
                if data.get("schema_registry_basic_auth") is None:
                    data["schema_registry_basic_auth"] = f"{user or ''}:{password or ''}"
        return data

    @model_validator(mode="after")
    def _poll_interval_set_once_and_valid(self) -> Settings:
        if self.max_poll_interval_seconds * 1000 < self.session_timeout_ms:
            raise ValueError(f"{ENV_PREFIX}MAX_POLL_INTERVAL_SECONDS={self.max_poll_interval_seconds:g} is shorter "
                             f"than {ENV_PREFIX}SESSION_TIMEOUT_MS={self.session_timeout_ms} (librdkafka refuses it)")
        if "max.poll.interval.ms" in self.kafka_extra:  # two places for one value: say which one counts
            raise ValueError(f"{ENV_PREFIX}KAFKA_EXTRA sets max.poll.interval.ms: set {ENV_PREFIX}"
                             "MAX_POLL_INTERVAL_SECONDS instead (it reaches the consumers only; a producer warns on "
                             "that key)")
        return self

    @model_validator(mode="after")
    def _age_within_retention(self) -> Settings:
        if self.max_event_age_days is not None and self.max_event_age_days > self.retention_days:
            raise ValueError(f"{ENV_PREFIX}MAX_EVENT_AGE_DAYS={self.max_event_age_days} exceeds {ENV_PREFIX}"
                             f"RETENTION_DAYS={self.retention_days}: the store forgets an event's id (first copy wins) "
                             "retention_days after storing it, and a copy accepted after that could be stored as new")
        return self

    @property
    def event_age_days(self) -> int:
        return self.max_event_age_days or self.retention_days

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Build settings, turning validation problems into one :class:`ConfigError` that names the variables
        (never their values: they may be secrets)."""
        problem = unknown_env_message(cls)
        if problem:
            raise ConfigError(problem, unknown=True)
        try:
            return cls(**overrides)
        except PydanticValidationError as exc:
            problems = "; ".join(_problem(e) for e in exc.errors())
            raise ConfigError(f"invalid settings: {problems}") from exc
        except ValueError as exc:
            raise ConfigError(f"invalid settings: {str(exc).splitlines()[0]}") from exc

    @property
    def starts_embedded_broker(self) -> bool:
        return self.kafka_bootstrap is None

    def kafka_dir(self) -> Path:
        return self.embedded_kafka_dir or self.state_dir / "kafka"

    def bootstrap(self) -> str:
        return self.kafka_bootstrap or f"127.0.0.1:{self.embedded_broker_port}"

    def kafka_config(self, **extra: Any) -> dict[str, Any]:
        """The librdkafka config dict for this cluster; ``extra`` adds client-specific keys."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap(),
            "logger": logging.getLogger("librdkafka"),
            "security.protocol": self.kafka_security_protocol,
            "receive.message.max.bytes": RECEIVE_MESSAGE_MAX_BYTES,
        }
        if self.kafka_sasl_mechanism:
            conf["sasl.mechanism"] = self.kafka_sasl_mechanism
        if self.kafka_sasl_username is not None:
            conf["sasl.username"] = self.kafka_sasl_username
        if self.kafka_sasl_password is not None:
            conf["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        for key, path in (
            ("ssl.ca.location", self.kafka_ssl_ca_location),
            ("ssl.certificate.location", self.kafka_ssl_certificate_location),
            ("ssl.key.location", self.kafka_ssl_key_location),
        ):
            if path is not None:
                conf[key] = str(path)
        if self.kafka_ssl_key_password is not None:
            conf["ssl.key.password"] = self.kafka_ssl_key_password.get_secret_value()
        conf.update({k: v.get_secret_value() for k, v in self.kafka_extra.items()})
        conf.update(extra)
        return conf

    def consumer_config(self, group: str, **extra: Any) -> dict[str, Any]:
        return self.kafka_config(
            **{
                "group.id": group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": self.session_timeout_ms,
                "heartbeat.interval.ms": max(500, self.session_timeout_ms // 3),
                "max.poll.interval.ms": int(self.max_poll_interval_seconds * 1000),
                "isolation.level": "read_committed",
                "partition.assignment.strategy": "cooperative-sticky",
                "fetch.wait.max.ms": self.fetch_wait_max_ms,
                "fetch.min.bytes": self.fetch_min_bytes,
                **extra,
            }
        )

    def clickhouse_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``clickhouse_connect.get_client``."""
        kw: dict[str, Any] = {"dsn": self.clickhouse_dsn}
        if self.clickhouse_username is not None:
            kw["username"] = self.clickhouse_username
        if self.clickhouse_password is not None:
            kw["password"] = self.clickhouse_password.get_secret_value()
        if self.clickhouse_dsn.startswith("https"):
            kw["verify"] = self.clickhouse_verify_tls
            if self.clickhouse_ca_cert is not None:
                kw["ca_cert"] = str(self.clickhouse_ca_cert)
        return kw


def _problem(error: Any) -> str:
    """One validation problem as a user reads it: the variable and what is wrong; a check across settings
    (no single variable) names its settings in its own message."""
    if not error["loc"]:
        return str(error["msg"]).removeprefix("Value error, ")
    return f"{ENV_PREFIX}{'.'.join(str(p) for p in error['loc']).upper()}: {error['msg']}"
