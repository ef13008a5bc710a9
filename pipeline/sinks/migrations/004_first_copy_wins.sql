-- agentgov audit store, version 4: the first stored copy of an event_id is the one every read sees.
-- `transitions`, `assessments` and `findings` are ReplacingMergeTree keyed on event_id: a later copy with
-- the same id would replace the original under FINAL. So a later copy never reaches them. The writer looks
-- each batch's event_ids up in `event_ids` (one row per stored event, fed from `ingest`, primary key
-- event_id: a point lookup) and sends a copy from another source record (other partition or offset of the
-- transitions topic) to `ingest_duplicates` instead; its materialized view keeps it, append-only, in
-- `duplicates` with AG-EVD-005 added to its finding codes. A redelivery (same source record) still goes to
-- `ingest` and is absorbed by the dedup as before. Assessments are keyed by event_id on Kafka, so every
-- copy of an id reaches the same writer, in order: the check is deterministic, whatever partition of the
-- transitions topic each copy came through. ClickHouseSink.migrate() fills `event_ids` from the
-- `transitions` stored before this version (single node).

CREATE TABLE IF NOT EXISTS ${db}.event_ids${local} ${on_cluster}
(
    event_id String,
    run_id String,
    occurred_at DateTime64(3, 'UTC'),
    source_partition Int32,
    source_offset Int64,
    event_hash String
)
ENGINE = ${rmt}
PARTITION BY toYYYYMM(occurred_at)
ORDER BY event_id
TTL toDateTime(occurred_at) + INTERVAL ${ttl_days} DAY
SETTINGS ${dedup_window}, ttl_only_drop_parts = 1;

CREATE MATERIALIZED VIEW IF NOT EXISTS ${db}.mv_event_ids ${on_cluster} TO ${db}.event_ids${local} AS
SELECT event_id, run_id, transition.occurred_at AS occurred_at, source_partition, source_offset,
       transition.evidence.event_hash AS event_hash
FROM ${db}.ingest${local};

-- The writer's lookup: a batch's ids go in here by a binary insert (fast), and the lookup joins on them,
-- instead of 20,000 ids inlined into the query text (slow to parse). Rows expire after an hour.
CREATE TABLE IF NOT EXISTS ${db}.id_probe${local} ${on_cluster}
(
    token String,
    event_id String,
    at DateTime DEFAULT now()
)
ENGINE = ${mt}
ORDER BY (token, event_id)
TTL at + INTERVAL 1 HOUR;

CREATE TABLE IF NOT EXISTS ${db}.ingest_duplicates${local} ${on_cluster} AS ${db}.ingest${local} ENGINE = Null;

CREATE TABLE IF NOT EXISTS ${db}.duplicates${local} ${on_cluster}
(
    event_id String,
    stored_at DateTime64(6, 'UTC'),
    run_id String,
    agent_id String,
    occurred_at DateTime64(3, 'UTC'),
    step Int32,
    from_state String,
    to_state String,
    action LowCardinality(String),
    target_id String,
    system String,
    resource_id String,
    privilege_tier Int32,
    outcome LowCardinality(String),
    event_hash String,
    key_id Nullable(String),
    risk_score Int32,
    finding_codes Array(LowCardinality(String)),
    source_partition Int32,
    source_offset Int64,
    transition String
)
ENGINE = ${mt}
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (event_id, stored_at)
TTL toDateTime(occurred_at) + INTERVAL ${ttl_days} DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS ${db}.mv_duplicates ${on_cluster} TO ${db}.duplicates${local} AS
SELECT
    event_id,
    now64(6) AS stored_at,
    run_id, agent_id,
    transition.occurred_at AS occurred_at,
    transition.step AS step,
    transition.from_state AS from_state,
    transition.to_state AS to_state,
    action,
    transition.target.identity_id AS target_id,
    transition.resource.system AS system,
    transition.resource.resource_id AS resource_id,
    transition.resource.privilege_tier AS privilege_tier,
    transition.decision.outcome AS outcome,
    transition.evidence.event_hash AS event_hash,
    transition.evidence.key_id AS key_id,
    risk_score,
    arrayDistinct(arrayConcat(arrayMap(f -> f.code, findings), ['AG-EVD-005'])) AS finding_codes,
    source_partition, source_offset,
    toJSONString(transition) AS transition
FROM ${db}.ingest_duplicates${local};

