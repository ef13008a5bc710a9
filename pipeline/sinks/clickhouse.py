"""The ClickHouse audit store: migrations, idempotent Avro inserts, and the client factory.

The same code targets ``chdb:///path`` (embedded engine, one process at a time) and
``http(s)://host:8123`` through clickhouse-connect. Event fields never become SQL text: batches go in
as Avro (``FORMAT Avro``) and reads use bound parameters.

Example::

    sink = ClickHouseSink.connect(settings)
    sink.migrate()
    sink.insert_assessments(ocf_bytes, token="agentgov.assessments.v1-3:100-199-<schema>-<content digest>")
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import logging
import os
import re
import threading
import time
import uuid
import weakref
from collections.abc import Iterable
from importlib.resources import files
from pathlib import Path
from string import Template
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from ..errors import ConfigError, SinkError, StoreLocked, StoreMissing
from ..events import GRANTS, REVOKES
from ..settings import Settings, redact_urls

log = logging.getLogger(__name__)
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _normalise_dsn(dsn: str) -> str:
    if dsn.startswith("chdb://"):
        path = Path(dsn[len("chdb://"):]).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        return f"chdb://{path}"
    return dsn


def chdb_path(dsn: str) -> Path | None:
    """The data directory of an embedded (``chdb://``) store, or None for a server DSN."""
    return Path(dsn[len("chdb://"):]).expanduser().resolve() if dsn.startswith("chdb://") else None


def check_unlocked(path: Path) -> None:
    """Raise :class:`StoreLocked` if another process has the chdb store at ``path`` open.

    chdb, like clickhouse-server, holds an exclusive ``flock`` on ``<path>/status`` (which names its PID)
    while the store is open; asking for a shared lock without blocking tells whether someone holds it."""
    status = path / "status"
    try:
        fd = os.open(status, os.O_RDONLY)
    except OSError:
        return  # never opened: nobody holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return
    except OSError:
        m = re.search(r"PID:\s*(\d+)", status.read_text(errors="replace"))
        pid = int(m[1]) if m else None
        if pid == os.getpid():
            return  # this process has it open already: chdb shares it between our connections
    finally:
        os.close(fd)
    raise StoreLocked(
        f"the audit store at {path} is open in another process (pid {pid or '?'}, e.g. a running `agentgov run`); "
        "an embedded store serves one process at a time: stop that process first, or read through a "
        "ClickHouse server (AGENTGOV_CLICKHOUSE_DSN=http://host:8123)", path=str(path), pid=pid)


_embedded: weakref.WeakSet[Client] = weakref.WeakSet()
_embedded_lock = threading.Lock()
_closing_registered = False


EXIT_CLOSE_SECONDS = 10.0
"""How long the exit hook waits for the embedded clients to close."""


def _close_embedded() -> None:
    """Close every embedded client still open. chdb can die with SIGSEGV when the interpreter exits with
    a connection still open: its engine is then torn down by a static destructor while its worker threads
    run (chdb-io/chdb-core#177). Registered at the first embedded connection, after chdb's own exit hook,
    so it runs before that hook (exit hooks run last registered first). A close waits for a query in flight
    on its client; a thread left inside one would hold the exit, so the closes get ``EXIT_CLOSE_SECONDS``."""
    with _embedded_lock:
        clients = list(_embedded)
        _embedded.clear()

    def close_all() -> None:
        for client in clients:
            try:
                client.close()
            except Exception:  # exiting anyway: one client's failure must not keep the others open
                log.debug("closing an embedded store client at exit failed", exc_info=True)

    closing = threading.Thread(target=close_all, name="close-embedded", daemon=True)
    closing.start()
    closing.join(EXIT_CLOSE_SECONDS)
    if closing.is_alive():
        log.warning("embedded store clients still busy at exit; exiting without closing them",
                    extra={"kv": {"clients": len(clients), "waited_s": EXIT_CLOSE_SECONDS}})


def open_embedded(path: Path | str, **kwargs: Any) -> Client:
    """A client of the embedded store at ``path``, closed at the latest when the process exits."""
    global _closing_registered
    client = clickhouse_connect.get_client(dsn=_normalise_dsn(f"chdb://{path}"), **kwargs)
    with _embedded_lock:
        _embedded.add(client)
        if not _closing_registered:
            atexit.register(_close_embedded)
            _closing_registered = True
    return client


def connect(settings: Settings) -> Client:
    kwargs = settings.clickhouse_kwargs()
    path = chdb_path(kwargs["dsn"])
    if path is not None and path.exists():
        check_unlocked(path)
    kwargs["dsn"] = _normalise_dsn(kwargs["dsn"])
    try:
        if path is not None:
            del kwargs["dsn"]
            return open_embedded(path, **kwargs)
        return clickhouse_connect.get_client(**kwargs)
    except Exception as exc:
        detail = str(exc)
        if settings.clickhouse_password is not None and settings.clickhouse_password.get_secret_value():
            detail = detail.replace(settings.clickhouse_password.get_secret_value(), "**********")
        shown = redact_urls(settings.clickhouse_dsn)
        raise SinkError(f"cannot connect to ClickHouse at {shown}: {redact_urls(detail)}", dsn=shown) from None


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration, in order."""
    out = []
    for entry in files("pipeline.sinks").joinpath("migrations").iterdir():
        m = re.match(r"^(\d+)_(.+)\.sql$", entry.name)
        if m:
            out.append((int(m[1]), m[2], entry.read_text()))
    return sorted(out)


SCORER_FINDINGS = "finding_idx < 1000"
"""Rows of ``findings`` that a scorer raised: migration 006 copies each cross-run finding in with
``finding_idx`` 1000 and above. Readers that show ``cross_run_findings`` in their own right (trail, export,
recertification evidence, the demo) add this condition so a cross-run finding is not shown twice."""

BACKFILL: dict[int, str | tuple[str, ...]] = {
    # 004: ids of the events stored before first-copy-wins.
    4: "INSERT INTO {db}.event_ids SELECT event_id, run_id, occurred_at, source_partition, source_offset, "
       "event_hash FROM {db}.transitions",
    # 006: cross-run findings stored before they reached the review queue.
    6: "INSERT INTO {db}.findings (event_id, finding_idx, run_id, agent_id, target_id, action, occurred_at, "
       "scored_at, code, severity, category, message, evidence_fields, refs, related_event_ids, "
       "governance_policy_version) SELECT event_id, toUInt16(1000 + cityHash64(finding_id) % 60000), run_id, "
       "agent_id, '', '', occurred_at, detected_at, code, severity, category, message, [], refs, "
       "related_event_ids, governance_policy_version FROM {db}.cross_run_findings FINAL",
    # 009: the cross-run copies in `findings` again, keyed by their finding_id, then the copies 006 made
    # without it (a collision of their finding_idx hid one of two findings of an event): each finding once.
    9: ("INSERT INTO {db}.findings (event_id, finding_idx, run_id, agent_id, target_id, action, occurred_at, "
        "scored_at, code, severity, category, message, evidence_fields, refs, related_event_ids, "
        "governance_policy_version, finding_id) SELECT event_id, toUInt16(1000 + cityHash64(finding_id) % 60000), "
        "run_id, agent_id, '', '', occurred_at, detected_at, code, severity, category, message, [], refs, "
        "related_event_ids, governance_policy_version, finding_id FROM {db}.cross_run_findings FINAL",
        "ALTER TABLE {db}.findings DELETE WHERE finding_idx >= 1000 AND finding_id = '' "
        "SETTINGS mutations_sync = 2"),
}
"""What a migration's new materialized views would have written for rows stored before it, applied once
on a store that already had data (single node; on a cluster the back-fill is an operator's step,
docs/clickhouse.md)."""


def split_statements(sql: str) -> list[str]:
    body = "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


# Shards are chosen by run: a run's events, and every redelivered copy of one event, land on one shard,
# so ReplacingMergeTree dedup and FINAL stay shard-local and a trail reads one shard
# (optimize_skip_unused_shards).
SHARDING_KEY = "cityHash64(run_id)"
# Tables without run_id shard by their own key (the baseline rollup is per agent).
SHARDING_KEYS = {"agent_hourly": "cityHash64(agent_id)", "access_changes": "cityHash64(target_id)",
                 "decisions": "cityHash64(subject_id)", "exceptions": "cityHash64(exception_id)",
                 "id_probe": "cityHash64(event_id)"}
_LOCAL_TABLE = re.compile(r"^CREATE TABLE IF NOT EXISTS (\w+)\.(\w+)_local\b")
_ZK_PATH = "'/clickhouse/tables/{shard}/{database}/{table}', '{replica}'"


# The actions that add access (pipeline.events.GRANTS), as a SQL list for the baseline rollup.
_GRANT_ACTIONS = ", ".join(f"'{a}'" for a in sorted(str(a) for a in GRANTS))
_ACCESS_ACTIONS = ", ".join(f"'{a}'" for a in sorted(str(a) for a in GRANTS | REVOKES))


def template_vars(database: str, ttl_days: int, cluster: str | None) -> dict[str, Any]:
    """Placeholder values of the migration files, single node or cluster."""
    if cluster:
        return {
            "db": database, "ttl_days": ttl_days, "on_cluster": f"ON CLUSTER {cluster}", "local": "_local",
            "rmt": f"ReplicatedReplacingMergeTree({_ZK_PATH})",
            "rmt_ver": f"ReplicatedReplacingMergeTree({_ZK_PATH}, scored_at)",
            "amt": f"ReplicatedAggregatingMergeTree({_ZK_PATH})",
            "mt": f"ReplicatedMergeTree({_ZK_PATH})",
            "dedup_window": "replicated_deduplication_window = 10000",
            "grant_actions": _GRANT_ACTIONS, "access_actions": _ACCESS_ACTIONS,
        }
    return {"db": database, "ttl_days": ttl_days, "on_cluster": "", "local": "",
            "rmt": "ReplacingMergeTree", "rmt_ver": "ReplacingMergeTree(scored_at)",
            "amt": "AggregatingMergeTree", "mt": "MergeTree",
            "dedup_window": "non_replicated_deduplication_window = 10000", "grant_actions": _GRANT_ACTIONS,
            "access_actions": _ACCESS_ACTIONS}


def render(sql: str, database: str, ttl_days: int, cluster: str | None = None) -> list[str]:
    """The statements of one migration file. On a cluster, every ``X_local`` table (Replicated*MergeTree,
    or Null for ingest) is followed by its ``Distributed`` twin ``X``, so readers and the writer use the
    same table names in both modes."""
    out = []
    for statement in split_statements(Template(sql).substitute(template_vars(database, ttl_days, cluster))):
        out.append(statement)
        m = _LOCAL_TABLE.match(statement)
        if m and cluster:
            db, table = m[1], m[2]
            out.append(f"CREATE TABLE IF NOT EXISTS {db}.{table} ON CLUSTER {cluster} AS {db}.{table}_local "
                       f"ENGINE = Distributed({cluster}, {db}, {table}_local, "
                       f"{SHARDING_KEYS.get(table, SHARDING_KEY)})")
    return out


def content_digest(values: Iterable[bytes | memoryview]) -> str:
    """A digest of a batch's record values, for its ``insert_deduplication_token``. Offsets alone do not name
    a batch: the embedded Tansu broker keeps its log in memory, so after a restart (``agentgov run`` restarts
    it) offsets start at 0 again, and a new batch over the offsets of one still in ClickHouse's dedup window
    got that batch's token and was dropped as its retry. A retry of the same batch has the same values, so
    it keeps its token. blake2b: about 1 GB/s, and 128 bits."""
    digest = hashlib.blake2b(digest_size=16)
    for value in values:
        digest.update(value)
    return digest.hexdigest()


# ClickHouse error codes that blame the inserted data, not the store: retrying the same rows cannot help,
# so the writer isolates the rows instead (writer.py). Everything else (read-only table, timeouts, network,
# memory) is the store's and is retried whole.
DATA_ERROR_CODES = frozenset({
    6,    # CANNOT_PARSE_TEXT
    27,   # CANNOT_PARSE_INPUT_ASSERTION_FAILED
    33,   # CANNOT_READ_ALL_DATA
    38,   # CANNOT_PARSE_DATE
    41,   # CANNOT_PARSE_DATETIME
    53,   # TYPE_MISMATCH
    69,   # ARGUMENT_OUT_OF_BOUND
    70,   # CANNOT_CONVERT_TYPE
    72,   # CANNOT_PARSE_NUMBER
    117,  # INCORRECT_DATA
    131,  # TOO_LARGE_STRING_SIZE
    321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    349,  # CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
})
# 252 (TOO_MANY_PARTS) blames the data only with this message: a batch spanning more days than
# max_partitions_per_insert_block. The same code says "Too many parts ... Merges are processing significantly
# slower than inserts": the store's backpressure, retried whole like an outage (every row of a batch is refused
# alike, so isolating them dead-lettered valid events).
TOO_MANY_PARTITIONS = "Too many partitions for single INSERT block"
_CODE = re.compile(r"Code: (\d+)")


def error_code(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    m = _CODE.search(str(exc))
    return int(m[1]) if m else None


def is_data_error(code: int | None, text: str) -> bool:
    """True when the store refused the rows themselves (see DATA_ERROR_CODES); 252 only for a block over too
    many partitions (see TOO_MANY_PARTITIONS); 1001 (STD_EXCEPTION) only when it is the Avro reader's, e.g.
    ``Value out of range for Avro int``."""
    return (code in DATA_ERROR_CODES or (code == 252 and TOO_MANY_PARTITIONS in text)
            or (code == 1001 and "avro::Exception" in text))


class ClickHouseSink:
    """Writes assessment batches and serves audit reads."""

    def __init__(self, client: Client, database: str = "agentgov", *, ttl_days: int = 400,
                 cluster: str | None = None) -> None:
        if not _IDENT.match(database):
            raise ConfigError(f"invalid ClickHouse database name {database!r}")
        if cluster is not None and not _IDENT.match(cluster):
            raise ConfigError(f"invalid ClickHouse cluster name {cluster!r}")
        self.client = client
        self.database = database
        self.ttl_days = ttl_days
        self.cluster = cluster

    @classmethod
    def connect(cls, settings: Settings) -> ClickHouseSink:
        return cls(connect(settings), settings.clickhouse_database, ttl_days=settings.retention_days,
                   cluster=settings.clickhouse_cluster)

    @classmethod
    def open_existing(cls, settings: Settings) -> ClickHouseSink:
        """Connect for reading only: raise :class:`StoreMissing` (creating nothing) unless the store's tables
        exist, so ``agentgov trail`` on a fresh machine says so instead of failing inside a query."""
        path = chdb_path(settings.clickhouse_dsn)
        shown = redact_urls(settings.clickhouse_dsn)
        missing = StoreMissing(
            f"no audit store at {path or shown} (database {settings.clickhouse_database}); "
            "run `agentgov run` or `agentgov migrate`, or set AGENTGOV_CLICKHOUSE_DSN", dsn=shown)
        if path is not None and not (path / "metadata").is_dir():
            raise missing
        sink = cls.connect(settings)
        try:
            found = sink.client.query("SELECT count() FROM system.tables WHERE database = {db:String} "
                                      "AND name = 'transitions'", parameters={"db": sink.database})
            exists = bool(found.result_rows[0][0])
        except Exception as exc:
            sink.close()
            raise SinkError(f"cannot read the audit store at {shown}: {redact_urls(str(exc))}", dsn=shown) from exc
        if not exists:
            sink.close()
            raise missing
        return sink

    # -- DDL ----------------------------------------------------------------------------------
    def migrate(self) -> list[int]:
        """Apply pending migrations. Idempotent; returns the versions applied now."""
        db = self.database
        on_cluster, engine = "", "ReplacingMergeTree"
        if self.cluster:
            # One ledger for the whole cluster (no {shard} in the path): every node sees what was applied.
            on_cluster = f"ON CLUSTER {self.cluster}"
            engine = "ReplicatedReplacingMergeTree('/clickhouse/tables/all/{database}/{table}', '{replica}')"
        self.client.command(f"CREATE DATABASE IF NOT EXISTS {db} {on_cluster}")
        self.client.command(
            f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations {on_cluster} (version UInt32, name String, "
            f"applied_at DateTime DEFAULT now()) ENGINE = {engine} ORDER BY version")
        done = {row[0] for row in self.client.query(f"SELECT version FROM {db}.schema_migrations FINAL").result_rows}
        applied = []
        for version, name, sql in migrations():
            if version in done:
                if version == 4:  # id_probe joined 004 after some stores had applied it: create it if missing
                    for statement in render(sql, db, self.ttl_days, self.cluster):
                        if ".id_probe" in statement:
                            self.client.command(statement)
                continue
            for statement in render(sql, db, self.ttl_days, self.cluster):
                self.client.command(statement)
            if version in BACKFILL and not self.cluster and done:  # rows stored before the version's views
                backfill = BACKFILL[version]
                for statement in (backfill,) if isinstance(backfill, str) else backfill:
                    self.client.command(statement.format(db=db))
            self.client.insert(f"{db}.schema_migrations", [[version, name]], column_names=["version", "name"])
            applied.append(version)
            log.info("migration applied", extra={"kv": {"version": version, "name": name}})
        return applied

    # -- writes -------------------------------------------------------------------------------
    def insert_assessments(self, container: bytes, token: str, table: str = "ingest") -> None:
        """Insert one Avro container into the ingest table. Raises :class:`SinkError` on failure.

        On a cluster ``ingest`` is the Distributed table: the insert returns only once every shard holds
        its rows (foreground insert), so committing the offsets afterwards stays honest. A column the
        container's schema lacks takes its default (``input_format_avro_allow_missing_fields``): a container
        written without the writer's trailing ``source_digest`` (a writer older than migration 008 while a
        deployment upgrades, a tool) stores with ``''``, matched by its source alone, instead of failing."""
        settings: dict[str, Any] = {"insert_deduplication_token": token,
                                    "deduplicate_blocks_in_dependent_materialized_views": 1,
                                    "insert_deduplicate": 1, "input_format_avro_allow_missing_fields": 1}
        if self.cluster:
            settings["distributed_foreground_insert"] = 1
        try:
            self.client.raw_insert(f"{self.database}.{table}", insert_block=container, fmt="Avro", settings=settings)
        except Exception as exc:
            code = error_code(exc)
            raise SinkError(f"insert failed: {type(exc).__name__}: {str(exc)[:500]}", table=table,
                            kind=type(exc).__name__, code=code, data=is_data_error(code, str(exc))) from exc

    def insert_rows(self, table: str, rows: list[list[Any]], columns: list[str], token: str) -> None:
        """Insert rows given as Python values (the correlator's findings, which are decoded anyway). Raises
        :class:`SinkError` classified like :meth:`insert_assessments`' (``data``: the rows' fault), so the
        caller can isolate refused rows the way the writer does."""
        try:
            self.client.insert(f"{self.database}.{table}", rows, column_names=columns,
                               settings={"insert_deduplication_token": token, "insert_deduplicate": 1,
                                         "deduplicate_blocks_in_dependent_materialized_views": 1})
        except Exception as exc:
            code = error_code(exc)
            raise SinkError(f"insert failed: {type(exc).__name__}: {str(exc)[:500]}", table=table,
                            kind=type(exc).__name__, code=code, data=is_data_error(code, str(exc))) from exc

    def insert_duplicates(self, container: bytes, token: str) -> None:
        """Insert later copies of stored event_ids (``ingest_duplicates`` -> ``duplicates``, append-only)."""
        self.insert_assessments(container, token, table="ingest_duplicates")

    def stored_sources(self, event_ids: list[str]) -> dict[str, set[tuple[int, int, str]]]:
        """For each of ``event_ids`` already stored: the source records (transitions partition, offset, and
        the digest of the content, '' if stored before migration 008) it was stored from. A point lookup on
        ``event_ids``' primary key. Raises :class:`SinkError`."""
        if not event_ids:
            return {}
        rows = self._probed(event_ids, "event_id, source_partition, source_offset, source_digest", "event_ids",
                            "event_id")
        out: dict[str, set[tuple[int, int, str]]] = {}
        for event_id, partition, offset, digest in rows:
            out.setdefault(event_id, set()).add((int(partition), int(offset), digest))
        return out

    def stored_findings(self, finding_ids: list[str], columns: Iterable[str]) -> list[tuple[Any, ...]]:
        """Every stored version (no FINAL) of the cross-run findings among ``finding_ids``: ``finding_id``, then
        ``columns`` (SQL expressions, the caller's constants, never input), for the first-copy check of
        ``pipeline.correlations``. A point lookup on the table's primary key, the ids probed as
        :meth:`stored_sources` probes event ids. Raises :class:`SinkError`."""
        if not finding_ids:
            return []
        return self._probed(finding_ids, f"finding_id, {', '.join(columns)}", "cross_run_findings", "finding_id")

    def _probed(self, ids: list[str], select: str, table: str, key: str) -> list[tuple[Any, ...]]:
        """``select`` (our constants) from ``table`` where ``key`` is one of ``ids``: the ids go in through the
        ``id_probe`` table under a token of their own, never into the query text, so any number of ids of any
        content is a point lookup on ``key``. Raises :class:`SinkError` (not the data's fault)."""
        token = uuid.uuid4().hex
        try:
            self.client.insert(f"{self.database}.id_probe", [[token, i] for i in ids],
                               column_names=["token", "event_id"],
                               settings={"distributed_foreground_insert": 1} if self.cluster else None)
            result = self.client.query(
                f"SELECT {select} FROM {self.database}.{table} "
                f"WHERE {key} GLOBAL IN (SELECT event_id FROM {self.database}.id_probe "
                "WHERE token = {token:String})", parameters={"token": token})
        except Exception as exc:
            code = error_code(exc)
            raise SinkError(f"{key} lookup failed: {type(exc).__name__}: {str(exc)[:500]}", table=table,
                            kind=type(exc).__name__, code=code, data=False) from exc
        return [tuple(row) for row in result.result_rows]

    # -- reads --------------------------------------------------------------------------------
    def query(self, sql: str, parameters: dict[str, Any] | None = None,
              settings: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        result = self.client.query(sql.replace("{db}", self.database), parameters=parameters or {},
                                   settings=settings)
        return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]

    def count(self, table: str) -> int:
        if not _IDENT.match(table):
            raise ValueError(table)
        return int(self.client.query(f"SELECT count() FROM {self.database}.{table} FINAL").result_rows[0][0])

    def close(self) -> None:
        self.client.close()


def wait_for(predicate: Any, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
