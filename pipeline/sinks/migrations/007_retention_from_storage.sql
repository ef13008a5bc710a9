-- agentgov audit store, version 7: retention counts from when the store received a row.
-- Until now every audit table expired rows at occurred_at + ttl_days, and occurred_at is the agent's claim:
-- an event stamped just inside max_event_age_days (at most retention_days) was scored and stored, then
-- dropped by the next TTL merge, hours later, with its findings and its event_ids row, after which the
-- same event_id could be stored again as a "first copy". Each TTL'd audit table now has `stored_at`, set by
-- the store (DEFAULT now64(3)) when a row arrives, and expires rows at greatest(occurred_at, stored_at) +
-- ttl_days: never sooner than retention_days after storage (greatest: occurred_at may be up to
-- max_future_skew_seconds ahead).
-- Why a DEFAULT and not a time the scorer or writer sends: inserts are deduplicated by their token
-- (insert_deduplication_token, also in the dependent views), never by content, so a retried batch is
-- still dropped whole; a redelivered copy stored under another token gets a later stored_at, and
-- whichever copy ReplacingMergeTree keeps (the last inserted; in `assessments` the highest scored_at, the
-- version, which stored_at does not touch) was stored no earlier than the first: retention only grows.
-- Rows stored before this version: their storage time was never recorded. They get stored_at 1970-01-01
-- (materialized before the DEFAULT changes, so it stays put) and so keep the retention they had,
-- occurred_at + ttl_days: the upgrade neither extends nor shortens what is already stored, and their TTL
-- does not need recomputing (materialize_ttl_after_modify = 0: greatest(occurred_at, 1970) = occurred_at).
-- MATERIALIZE COLUMN on 26.9 keeps values a part already holds, so running this file again after a
-- partial failure does not overwrite a storage time.
-- Space: parts stay partitioned by occurred_at (a partition key cannot change) and, with
-- ttl_only_drop_parts, a part is dropped once every row in it expired. A day's parts are freed
-- retention_days after the last row stored into that day; a backdated event stored today into an old
-- day (and any part a merge combines with it) is kept retention_days from today.
-- `event_ids`, the first-copy registry, expires a day after the rows it protects (each view sets its own
-- stored_at, milliseconds apart), so an id is never forgotten while a copy of it is still readable.
-- `duplicates` (004) already records stored_at; only its TTL changes. `agent_hourly` (002) keeps its TTL
-- on the hour: a derived rollup, read only for the baseline window before now, never as evidence.
-- On a cluster the Distributed twins get the column with the new DEFAULT (on one node those statements
-- repeat harmlessly); a direct insert into a twin (cross_run_findings) takes the twin's DEFAULT.

ALTER TABLE ${db}.transitions${local} ${on_cluster}
    ADD COLUMN IF NOT EXISTS stored_at DateTime64(3, 'UTC') DEFAULT toDateTime64(0, 3, 'UTC');
ALTER TABLE ${db}.transitions${local} ${on_cluster} MATERIALIZE COLUMN stored_at SETTINGS mutations_sync = 2;
ALTER TABLE ${db}.transitions${local} ${on_cluster} MODIFY COLUMN stored_at DateTime64(3, 'UTC') DEFAULT now64(3);
ALTER TABLE ${db}.transitions ${on_cluster}
    ADD COLUMN IF NOT EXISTS stored_at DateTime64(3, 'UTC') DEFAULT now64(3);
ALTER TABLE ${db}.transitions${local} ${on_cluster}
    MODIFY TTL toDateTime(greatest(occurred_at, stored_at)) + INTERVAL ${ttl_days} DAY
    SETTINGS materialize_ttl_after_modify = 0;

ALTER TABLE ${db}.assessments${local} ${on_cluster}
    ADD COLUMN IF NOT EXISTS stored_at DateTime64(3, 'UTC') DEFAULT toDateTime64(0, 3, 'UTC');
ALTER TABLE ${db}.assessments${local} ${on_cluster} MATERIALIZE COLUMN stored_at SETTINGS mutations_sync = 2;
ALTER TABLE ${db}.assessments${local} ${on_cluster} MODIFY COLUMN stored_at DateTime64(3, 'UTC') DEFAULT now64(3);
ALTER TABLE ${db}.assessments ${on_cluster}
    ADD COLUMN IF NOT EXISTS stored_at DateTime64(3, 'UTC') DEFAULT now64(3);
ALTER TABLE ${db}.assessments${local} ${on_cluster}
    MODIFY TTL toDateTime(greatest(occurred_at, stored_at)) + INTERVAL ${ttl_days} DAY
    SETTINGS materialize_ttl_after_modify = 0;

ALTER TABLE ${db}.findings${local} ${on_cluster}
    ADD COLUMN IF NOT EXISTS stored_at DateTime64(3, 'UTC') DEFAULT toDateTime64(0, 3, 'UTC');
ALTER TABLE ${db}.findings${local} ${on_cluster} MATERIALIZE COLUMN stored_at SETTINGS mutations_sync = 2;
ALTER TABLE ${db}.findings${local} ${on_cluster} MODIFY COLUMN stored_at DateTime64(3, 'UTC') DEFAULT now64(3);
ALTER TABLE ${db}.findings ${on_cluster}
    ADD COLUMN IF NOT EXISTS stored_at DateTime64(3, 'UTC') DEFAULT now64(3);
ALTER TABLE ${db}.findings${local} ${on_cluster}
    MODIFY TTL toDateTime(greatest(occurred_at, stored_at)) + INTERVAL ${ttl_days} DAY
    SETTINGS materialize_ttl_after_modify = 0;

ALTER TABLE ${db}.cross_run_findings${local} ${on_cluster}
    ADD COLUMN IF NOT EXISTS stored_at DateTime64(3, 'UTC') DEFAULT toDateTime64(0, 3, 'UTC');
ALTER TABLE ${db}.cross_run_findings${local} ${on_cluster} MATERIALIZE COLUMN stored_at SETTINGS mutations_sync = 2;
ALTER TABLE ${db}.cross_run_findings${local} ${on_cluster}
    MODIFY COLUMN stored_at DateTime64(3, 'UTC') DEFAULT now64(3);
ALTER TABLE ${db}.cross_run_findings ${on_cluster}
    ADD COLUMN IF NOT EXISTS stored_at DateTime64(3, 'UTC') DEFAULT now64(3);
ALTER TABLE ${db}.cross_run_findings${local} ${on_cluster}
    MODIFY TTL toDateTime(greatest(occurred_at, stored_at)) + INTERVAL ${ttl_days} DAY
    SETTINGS materialize_ttl_after_modify = 0;

ALTER TABLE ${db}.event_ids${local} ${on_cluster}
    ADD COLUMN IF NOT EXISTS stored_at DateTime64(3, 'UTC') DEFAULT toDateTime64(0, 3, 'UTC');
ALTER TABLE ${db}.event_ids${local} ${on_cluster} MATERIALIZE COLUMN stored_at SETTINGS mutations_sync = 2;
ALTER TABLE ${db}.event_ids${local} ${on_cluster} MODIFY COLUMN stored_at DateTime64(3, 'UTC') DEFAULT now64(3);
ALTER TABLE ${db}.event_ids ${on_cluster}
    ADD COLUMN IF NOT EXISTS stored_at DateTime64(3, 'UTC') DEFAULT now64(3);
ALTER TABLE ${db}.event_ids${local} ${on_cluster}
    MODIFY TTL toDateTime(greatest(occurred_at, stored_at)) + INTERVAL ${ttl_days} DAY + INTERVAL 1 DAY
    SETTINGS materialize_ttl_after_modify = 0;

ALTER TABLE ${db}.duplicates${local} ${on_cluster}
    MODIFY TTL toDateTime(greatest(occurred_at, stored_at)) + INTERVAL ${ttl_days} DAY
    SETTINGS materialize_ttl_after_modify = 0;
