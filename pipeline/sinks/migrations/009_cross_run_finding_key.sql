-- agentgov audit store, version 9: a cross-run finding is keyed in `findings` by its own id, not by a hash.
-- 006 copied each cross-run finding into `findings` with finding_idx = 1000 + cityHash64(finding_id) % 60000
-- (finding_idx is UInt16). Two cross-run findings of the same code completed by the same event, whose ids
-- fall on the same finding_idx (one pair in about 60,000; an agent choosing its grants' event ids finds one
-- offline in seconds), had the same sorting key, and FINAL kept one: the other never reached the review
-- queue. finding_idx is in the sorting key, and ClickHouse does not change the type of a key column, so it
-- is not widened: `findings` gets `finding_id` (the cross-run finding's id; '' for a scorer's finding, which
-- finding_idx already tells apart), appended to the sorting key in the same ALTER (the one change of a
-- sorting key ClickHouse makes without rewriting parts: a column added by that ALTER, without a default
-- expression). finding_idx keeps its meaning (>= 1000: a cross-run copy, pipeline.sinks.clickhouse.
-- SCORER_FINDINGS). The view is created again to fill the new column.
-- Rows stored before this version: the copies 006 made have finding_id ''; ClickHouseSink.migrate() (single
-- node; on a cluster the operator's step, docs/clickhouse.md) copies `cross_run_findings` FINAL in again
-- with their ids and then deletes the '' copies (finding_idx >= 1000), so a finding a collision hid before
-- the upgrade is visible again, and none is counted twice. Scorer findings are not touched.

ALTER TABLE ${db}.findings${local} ${on_cluster}
    ADD COLUMN IF NOT EXISTS finding_id String,
    MODIFY ORDER BY (code, agent_id, run_id, event_id, finding_idx, occurred_at, finding_id);

-- On a cluster the Distributed twin gets the column too (on one node this repeats harmlessly).
ALTER TABLE ${db}.findings ${on_cluster} ADD COLUMN IF NOT EXISTS finding_id String;

DROP VIEW IF EXISTS ${db}.mv_cross_run_findings ${on_cluster};

CREATE MATERIALIZED VIEW IF NOT EXISTS ${db}.mv_cross_run_findings ${on_cluster} TO ${db}.findings${local} AS
SELECT
    event_id,
    toUInt16(1000 + cityHash64(finding_id) % 60000) AS finding_idx,
    run_id, agent_id,
    '' AS target_id,
    '' AS action,
    occurred_at,
    detected_at AS scored_at,
    code, severity, category, message,
    CAST([], 'Array(String)') AS evidence_fields,
    refs, related_event_ids, governance_policy_version,
    CAST(NULL, 'Nullable(String)') AS exception_id,
    CAST(NULL, 'Nullable(Int32)') AS exception_version,
    finding_id
FROM ${db}.cross_run_findings${local};
