-- agentgov audit store, version 5: the review workbench (docs/review.md).
-- Findings carry the risk exception (id and version) that covered them when scored (RiskAssessment v2).
-- Decisions and exception versions arrive through Kafka (agentgov.decisions.v1, agentgov.exceptions.v1)
-- and are appended by the writer: nothing here is ever updated. ReplacingMergeTree only folds a
-- redelivered copy of the same record (same key, same bytes); read with FINAL.

ALTER TABLE ${db}.ingest${local} ${on_cluster}
    MODIFY COLUMN findings Array(Tuple(code String, severity String, category String, message String,
        evidence_fields Array(String), refs Array(String), related_event_ids Array(String),
        exception_id Nullable(String), exception_version Nullable(Int32)));

ALTER TABLE ${db}.findings${local} ${on_cluster}
    ADD COLUMN IF NOT EXISTS exception_id Nullable(String),
    ADD COLUMN IF NOT EXISTS exception_version Nullable(Int32);

-- On a cluster the Distributed twins get the same columns (on one node these repeat harmlessly).
ALTER TABLE ${db}.ingest ${on_cluster}
    MODIFY COLUMN findings Array(Tuple(code String, severity String, category String, message String,
        evidence_fields Array(String), refs Array(String), related_event_ids Array(String),
        exception_id Nullable(String), exception_version Nullable(Int32)));

ALTER TABLE ${db}.findings ${on_cluster}
    ADD COLUMN IF NOT EXISTS exception_id Nullable(String),
    ADD COLUMN IF NOT EXISTS exception_version Nullable(Int32);

-- 004's kept-apart copies arrive in the same Avro layout as `ingest`: keep their Null table in step.
ALTER TABLE ${db}.ingest_duplicates${local} ${on_cluster}
    MODIFY COLUMN findings Array(Tuple(code String, severity String, category String, message String,
        evidence_fields Array(String), refs Array(String), related_event_ids Array(String),
        exception_id Nullable(String), exception_version Nullable(Int32)));

ALTER TABLE ${db}.ingest_duplicates ${on_cluster}
    MODIFY COLUMN findings Array(Tuple(code String, severity String, category String, message String,
        evidence_fields Array(String), refs Array(String), related_event_ids Array(String),
        exception_id Nullable(String), exception_version Nullable(Int32)));

-- The review queue filters findings by agent (the benchmarked read, bench/review_queue.py); the sorting
-- key starts with code, so a bloom filter skips the other agents' granules. agent_id is the same in
-- every version of a row, so the index is safe under FINAL (docs/clickhouse.md).
ALTER TABLE ${db}.findings${local} ${on_cluster}
    ADD INDEX IF NOT EXISTS idx_agent agent_id TYPE bloom_filter(0.01) GRANULARITY 1;

ALTER TABLE ${db}.findings${local} ${on_cluster} MATERIALIZE INDEX idx_agent;

DROP VIEW IF EXISTS ${db}.mv_findings ${on_cluster};

CREATE MATERIALIZED VIEW IF NOT EXISTS ${db}.mv_findings ${on_cluster} TO ${db}.findings${local} AS
SELECT
    event_id,
    toUInt16(idx) AS finding_idx,
    run_id, agent_id,
    transition.target.identity_id AS target_id,
    action,
    transition.occurred_at AS occurred_at,
    scored_at,
    f.code AS code, f.severity AS severity, f.category AS category, f.message AS message,
    f.evidence_fields AS evidence_fields, f.refs AS refs, f.related_event_ids AS related_event_ids,
    governance_policy_version,
    f.exception_id AS exception_id, f.exception_version AS exception_version
FROM ${db}.ingest${local}
ARRAY JOIN findings AS f, arrayEnumerate(findings) AS idx;

CREATE TABLE IF NOT EXISTS ${db}.decisions${local} ${on_cluster}
(
    decision_id String,
    kind LowCardinality(String),
    subject_kind LowCardinality(String),
    subject_id String,
    subject_version Int32,
    actor String,
    actor_roles Array(LowCardinality(String)),
    decided_at DateTime64(3, 'UTC'),
    from_state LowCardinality(Nullable(String)),
    to_state LowCardinality(Nullable(String)),
    classification LowCardinality(Nullable(String)),
    reason LowCardinality(Nullable(String)),
    comment Nullable(String),
    payload Map(String, String),
    INDEX idx_run payload['run_id'] TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_agent payload['agent_id'] TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = ${rmt}
PARTITION BY toYYYYMM(decided_at)
ORDER BY (subject_kind, subject_id, subject_version, decision_id)
SETTINGS ${dedup_window};

CREATE TABLE IF NOT EXISTS ${db}.exceptions${local} ${on_cluster}
(
    exception_id String,
    version Int32,
    state LowCardinality(String),
    code LowCardinality(String),
    agent_id String,
    workflow_id Nullable(String),
    target_id Nullable(String),
    entitlement Nullable(String),
    justification String,
    requester String,
    approver Nullable(String),
    requested_at DateTime64(3, 'UTC'),
    effective_at Nullable(DateTime64(3, 'UTC')),
    expires_at DateTime64(3, 'UTC'),
    ended_at Nullable(DateTime64(3, 'UTC')),
    updated_by String,
    updated_at DateTime64(3, 'UTC')
)
ENGINE = ${rmt}
ORDER BY (exception_id, version)
SETTINGS ${dedup_window};
