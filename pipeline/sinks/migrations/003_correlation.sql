-- agentgov audit store, version 3: the correlation stage.
-- `access_changes`: every executed grant and revoke (decision.outcome = 'granted'), any age: no TTL, so
-- separation of duties and grants to leavers can be audited against access granted months ago. Filled by
-- a materialized view from `ingest`, like the version-1 tables; ReplacingMergeTree on event_id under a
-- dedup token, so a redelivered batch stores each change once (read with FINAL).
-- `cross_run_findings`: the correlator's findings (agentgov.correlations.v1), one row per finding_id
-- (rule + entity + chain, deterministic), so a finding a replay produced again is stored once.

CREATE TABLE IF NOT EXISTS ${db}.access_changes${local} ${on_cluster}
(
    target_id String,
    system LowCardinality(String),
    access String,
    occurred_at DateTime64(3, 'UTC'),
    event_id String,
    action LowCardinality(String),
    run_id String,
    agent_id String,
    on_behalf_of Nullable(String),
    privilege_tier UInt8,
    authority LowCardinality(String),
    approved_by Nullable(String),
    source_partition Int32
)
ENGINE = ${rmt}
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (target_id, system, access, occurred_at, event_id)
SETTINGS ${dedup_window};

CREATE MATERIALIZED VIEW IF NOT EXISTS ${db}.mv_access_changes ${on_cluster} TO ${db}.access_changes${local} AS
SELECT
    transition.target.identity_id AS target_id,
    transition.resource.system AS system,
    ifNull(transition.resource.entitlement, transition.resource.resource_id) AS access,
    transition.occurred_at AS occurred_at,
    event_id,
    transition.action AS action,
    run_id,
    agent_id,
    transition.agent.on_behalf_of AS on_behalf_of,
    toUInt8(transition.resource.privilege_tier) AS privilege_tier,
    transition.decision.authority AS authority,
    transition.decision.approved_by AS approved_by,
    source_partition
FROM ${db}.ingest${local}
WHERE transition.decision.outcome = 'granted' AND transition.action IN (${access_actions});

CREATE TABLE IF NOT EXISTS ${db}.cross_run_findings${local} ${on_cluster}
(
    finding_id String,
    code LowCardinality(String),
    severity LowCardinality(String),
    category LowCardinality(String),
    pattern LowCardinality(String),
    message String,
    entity_key String,
    event_id String,
    run_id String,
    agent_id String,
    occurred_at DateTime64(3, 'UTC'),
    related_event_ids Array(String),
    related_run_ids Array(String),
    related_partitions Array(Int32),
    refs Array(String),
    detected_at DateTime64(3, 'UTC'),
    correlator_version LowCardinality(String),
    governance_policy_version LowCardinality(String),
    INDEX idx_runs related_run_ids TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = ${rmt}
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (finding_id)
TTL toDateTime(occurred_at) + INTERVAL ${ttl_days} DAY
SETTINGS ${dedup_window};
