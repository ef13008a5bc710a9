-- agentgov audit store, version 8: a redelivery is the same source record with the same content.
-- 004 let a copy of a stored event_id through to `ingest` when it came from the same source record
-- (transitions partition and offset), as a redelivery; ReplacingMergeTree then keeps the last insert. After
-- the embedded Tansu broker restarts (its log is in memory) offsets start at 0 again, and another event with
-- the same event_id can come from the (partition, offset) the original came from: a rewrite passed as a
-- redelivery and replaced the original. The writer now appends `source_digest` (the digest of the
-- transition's Avro datum, sent by the scorer: pipeline/assessment.py) to every row; `event_ids` keeps it, and
-- a copy is a redelivery only when its source and its digest match. A re-scored copy of the same event has
-- the same digest. Rows stored before this version keep '' and are matched by source alone, as before.
-- mv_event_ids is created again with the new column (as 005 did mv_findings): on a cluster, run this before
-- the writers start, or a batch stored in between has no row in `event_ids`.

ALTER TABLE ${db}.ingest${local} ${on_cluster} ADD COLUMN IF NOT EXISTS source_digest String DEFAULT '';

ALTER TABLE ${db}.ingest_duplicates${local} ${on_cluster} ADD COLUMN IF NOT EXISTS source_digest String DEFAULT '';

ALTER TABLE ${db}.event_ids${local} ${on_cluster} ADD COLUMN IF NOT EXISTS source_digest String DEFAULT '';

-- On a cluster the Distributed twins get the same columns (on one node these repeat harmlessly).
ALTER TABLE ${db}.ingest ${on_cluster} ADD COLUMN IF NOT EXISTS source_digest String DEFAULT '';

ALTER TABLE ${db}.ingest_duplicates ${on_cluster} ADD COLUMN IF NOT EXISTS source_digest String DEFAULT '';

ALTER TABLE ${db}.event_ids ${on_cluster} ADD COLUMN IF NOT EXISTS source_digest String DEFAULT '';

DROP VIEW IF EXISTS ${db}.mv_event_ids ${on_cluster};

CREATE MATERIALIZED VIEW IF NOT EXISTS ${db}.mv_event_ids ${on_cluster} TO ${db}.event_ids${local} AS
SELECT event_id, run_id, transition.occurred_at AS occurred_at, source_partition, source_offset,
       transition.evidence.event_hash AS event_hash, source_digest
FROM ${db}.ingest${local};
