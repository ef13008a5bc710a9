-- agentgov audit store, version 6: cross-run findings in the review workbench.
-- The correlator's findings (AG-XRN-*, stored once per finding_id in `cross_run_findings`, 003) are copied
-- into `findings` as a finding of the event that completed the chain. The queue, the finding page, the
-- state machine, history, trail and export then treat a hidden escalation spread over runs like any other
-- finding; its related_event_ids name every step, so the finding page shows every run's trail.
-- finding_idx: the scorer numbers an assessment's findings from 1; a cross-run finding takes 1000 plus a
-- hash of its finding_id, so it never replaces the scorer's findings of the same event, and a replayed or
-- redelivered cross-run finding (same finding_id) folds into the same row under FINAL. target_id and
-- action stay empty: the chain's steps, not one event, say who and what.
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
    CAST(NULL, 'Nullable(Int32)') AS exception_version
FROM ${db}.cross_run_findings${local};
