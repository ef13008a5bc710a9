-- agentgov audit store, version 2: per-agent hourly behaviour rollup for the drift baselines.
-- Refreshing baselines from `transitions` scans the whole baseline window every time; this rollup keeps
-- one row per agent and hour (merged in the background), so a refresh reads agents x hours instead.
-- Every aggregate is idempotent under redelivery: sets (groupUniqArray), max, and distinct counts of
-- event_id (uniq), so a batch stored twice does not inflate an agent's baseline.

CREATE TABLE IF NOT EXISTS ${db}.agent_hourly${local} ${on_cluster}
(
    agent_id String,
    hour DateTime('UTC'),
    events AggregateFunction(uniq, String),
    grants AggregateFunction(uniqIf, String, UInt8),
    actions AggregateFunction(groupUniqArray, String),
    systems AggregateFunction(groupUniqArray, String),
    entitlements AggregateFunction(groupUniqArray, String),
    inputs AggregateFunction(groupUniqArray, String),
    max_tier SimpleAggregateFunction(max, UInt8),
    policy_refs AggregateFunction(uniqMap, Map(String, String))
)
ENGINE = ${amt}
PARTITION BY toYYYYMM(hour)
ORDER BY (agent_id, hour)
TTL hour + INTERVAL ${ttl_days} DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS ${db}.mv_agent_hourly ${on_cluster} TO ${db}.agent_hourly${local} AS
SELECT
    transition.agent.agent_id AS agent_id,
    toStartOfHour(transition.occurred_at) AS hour,
    uniqState(event_id) AS events,
    uniqIfState(event_id, toUInt8(transition.decision.outcome = 'granted'
                                  AND transition.action IN (${grant_actions}))) AS grants,
    groupUniqArrayState(transition.action) AS actions,
    groupUniqArrayState(transition.resource.system) AS systems,
    groupUniqArrayIfState(assumeNotNull(transition.resource.entitlement),
                          isNotNull(transition.resource.entitlement)) AS entitlements,
    groupUniqArrayArrayState(arrayMap(i -> i.name, transition.inputs_used)) AS inputs,
    max(toUInt8(transition.resource.privilege_tier)) AS max_tier,
    uniqMapState(map(concat(transition.policy.policy_id, '@', transition.policy.policy_version), event_id))
        AS policy_refs
FROM ${db}.ingest${local}
GROUP BY agent_id, hour;
