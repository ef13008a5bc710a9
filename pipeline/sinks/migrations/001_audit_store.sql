-- agentgov audit store, version 1.
-- Assessments arrive as Avro (the RiskAssessment schema) into the Null table `ingest`; materialized
-- views fan each batch out to `transitions`, `assessments` and `findings`. All three are
-- ReplacingMergeTree keyed on event_id, and inserts carry a dedup token, so a redelivered batch never
-- double counts (read with FINAL for exact counts before background merges).
-- Keys (measured in docs/clickhouse.md): one partition per day of occurred_at, so retention drops whole
-- parts (ttl_only_drop_parts) and time filters prune; ORDER BY starts with agent_id then run_id (agent
-- and trail reads), bloom filters on run_id and target_id (identity reads). occurred_at ends every
-- sorting key: under FINAL, ClickHouse prunes partitions only on sorting-key columns.
-- Placeholders: ${db}, ${ttl_days}, ${on_cluster}, ${local}, ${rmt}, ${rmt_ver}, ${dedup_window} (see
-- template_vars() in clickhouse.py; on a cluster, tables are X_local plus a Distributed twin X).

CREATE DATABASE IF NOT EXISTS ${db} ${on_cluster};

CREATE TABLE IF NOT EXISTS ${db}.ingest${local} ${on_cluster}
(
    event_id String,
    run_id String,
    agent_id String,
    action LowCardinality(String),
    risk_score Int32,
    risk_level LowCardinality(String),
    findings Array(Tuple(code String, severity String, category String, message String,
                         evidence_fields Array(String), refs Array(String), related_event_ids Array(String))),
    scored_at DateTime64(3, 'UTC'),
    scorer_version String,
    governance_policy_version String,
    governance_policy_hash String,
    source_partition Int32,
    source_offset Int64,
    transition Tuple(
        event_id String,
        occurred_at DateTime64(3, 'UTC'),
        workflow_id String,
        workflow_version String,
        run_id String,
        step Int32,
        from_state String,
        to_state String,
        agent Tuple(agent_id String, agent_version String, on_behalf_of Nullable(String), model_id Nullable(String)),
        trigger Tuple(kind String, ref Nullable(String)),
        action String,
        target Tuple(identity_id String, identity_type String, lifecycle_state String),
        resource Tuple(system String, resource_id String, entitlement Nullable(String), privilege_tier Int32),
        inputs_used Array(Tuple(name String, source String)),
        decision Tuple(outcome String, authority String, recommended_by Nullable(String),
                       approved_by Nullable(String), approval_ref Nullable(String)),
        policy Tuple(policy_id String, policy_version String, decision_id Nullable(String)),
        evidence Tuple(event_hash String, prev_event_hash Nullable(String), signature Nullable(String),
                       key_id Nullable(String)),
        attributes Map(String, String),
        tenant Nullable(String))
)
ENGINE = Null;

CREATE TABLE IF NOT EXISTS ${db}.transitions${local} ${on_cluster}
(
    event_id String,
    occurred_at DateTime64(3, 'UTC'),
    workflow_id LowCardinality(String),
    workflow_version LowCardinality(String),
    run_id String,
    step Int32,
    from_state LowCardinality(String),
    to_state LowCardinality(String),
    agent_id String,
    agent_version LowCardinality(String),
    on_behalf_of Nullable(String),
    model_id LowCardinality(Nullable(String)),
    trigger_kind LowCardinality(String),
    trigger_ref Nullable(String),
    action LowCardinality(String),
    target_id String,
    target_type LowCardinality(String),
    lifecycle_state LowCardinality(String),
    system LowCardinality(String),
    resource_id String,
    entitlement Nullable(String),
    privilege_tier UInt8,
    inputs_used Array(Tuple(name String, source String)),
    outcome LowCardinality(String),
    authority LowCardinality(String),
    recommended_by LowCardinality(Nullable(String)),
    approved_by Nullable(String),
    approval_ref Nullable(String),
    policy_id LowCardinality(String),
    policy_version LowCardinality(String),
    decision_id Nullable(String),
    event_hash String,
    prev_event_hash Nullable(String),
    signature Nullable(String),
    key_id Nullable(String),
    attributes Map(String, String),
    tenant Nullable(String),
    source_partition Int32,
    source_offset Int64,
    INDEX idx_run run_id TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_target target_id TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_event event_id TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = ${rmt}
PARTITION BY toDate(occurred_at)
ORDER BY (agent_id, run_id, step, event_id, occurred_at)
TTL toDateTime(occurred_at) + INTERVAL ${ttl_days} DAY
SETTINGS ${dedup_window}, ttl_only_drop_parts = 1;

CREATE TABLE IF NOT EXISTS ${db}.assessments${local} ${on_cluster}
(
    event_id String,
    run_id String,
    agent_id String,
    target_id String,
    action LowCardinality(String),
    occurred_at DateTime64(3, 'UTC'),
    scored_at DateTime64(3, 'UTC'),
    risk_score UInt8,
    risk_level LowCardinality(String),
    finding_codes Array(LowCardinality(String)),
    scorer_version LowCardinality(String),
    governance_policy_version LowCardinality(String),
    governance_policy_hash LowCardinality(String),
    INDEX idx_run run_id TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_target target_id TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_event event_id TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = ${rmt_ver}
PARTITION BY toDate(occurred_at)
ORDER BY (agent_id, run_id, event_id, occurred_at)
TTL toDateTime(occurred_at) + INTERVAL ${ttl_days} DAY
SETTINGS ${dedup_window}, ttl_only_drop_parts = 1;

CREATE TABLE IF NOT EXISTS ${db}.findings${local} ${on_cluster}
(
    event_id String,
    finding_idx UInt16,
    run_id String,
    agent_id String,
    target_id String,
    action LowCardinality(String),
    occurred_at DateTime64(3, 'UTC'),
    scored_at DateTime64(3, 'UTC'),
    code LowCardinality(String),
    severity LowCardinality(String),
    category LowCardinality(String),
    message String,
    evidence_fields Array(String),
    refs Array(String),
    related_event_ids Array(String),
    governance_policy_version LowCardinality(String),
    INDEX idx_run run_id TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_target target_id TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = ${rmt}
PARTITION BY toDate(occurred_at)
ORDER BY (code, agent_id, run_id, event_id, finding_idx, occurred_at)
TTL toDateTime(occurred_at) + INTERVAL ${ttl_days} DAY
SETTINGS ${dedup_window}, ttl_only_drop_parts = 1;

CREATE MATERIALIZED VIEW IF NOT EXISTS ${db}.mv_transitions ${on_cluster} TO ${db}.transitions${local} AS
SELECT
    transition.event_id AS event_id,
    transition.occurred_at AS occurred_at,
    transition.workflow_id AS workflow_id,
    transition.workflow_version AS workflow_version,
    transition.run_id AS run_id,
    transition.step AS step,
    transition.from_state AS from_state,
    transition.to_state AS to_state,
    transition.agent.agent_id AS agent_id,
    transition.agent.agent_version AS agent_version,
    transition.agent.on_behalf_of AS on_behalf_of,
    transition.agent.model_id AS model_id,
    transition.trigger.kind AS trigger_kind,
    transition.trigger.ref AS trigger_ref,
    transition.action AS action,
    transition.target.identity_id AS target_id,
    transition.target.identity_type AS target_type,
    transition.target.lifecycle_state AS lifecycle_state,
    transition.resource.system AS system,
    transition.resource.resource_id AS resource_id,
    transition.resource.entitlement AS entitlement,
    toUInt8(transition.resource.privilege_tier) AS privilege_tier,
    transition.inputs_used AS inputs_used,
    transition.decision.outcome AS outcome,
    transition.decision.authority AS authority,
    transition.decision.recommended_by AS recommended_by,
    transition.decision.approved_by AS approved_by,
    transition.decision.approval_ref AS approval_ref,
    transition.policy.policy_id AS policy_id,
    transition.policy.policy_version AS policy_version,
    transition.policy.decision_id AS decision_id,
    transition.evidence.event_hash AS event_hash,
    transition.evidence.prev_event_hash AS prev_event_hash,
    transition.evidence.signature AS signature,
    transition.evidence.key_id AS key_id,
    transition.attributes AS attributes,
    transition.tenant AS tenant,
    source_partition,
    source_offset
FROM ${db}.ingest${local};

CREATE MATERIALIZED VIEW IF NOT EXISTS ${db}.mv_assessments ${on_cluster} TO ${db}.assessments${local} AS
SELECT
    event_id, run_id, agent_id,
    transition.target.identity_id AS target_id,
    action,
    transition.occurred_at AS occurred_at,
    scored_at,
    toUInt8(risk_score) AS risk_score,
    risk_level,
    arrayMap(f -> f.code, findings) AS finding_codes,
    scorer_version, governance_policy_version, governance_policy_hash
FROM ${db}.ingest${local};

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
    governance_policy_version
FROM ${db}.ingest${local}
ARRAY JOIN findings AS f, arrayEnumerate(findings) AS idx;
