"""Recertification writes: snapshot a campaign, decide items, sign off, review decision inputs.

Everything is a ``ReviewDecision`` on ``agentgov.decisions.v1`` that the writer appends (decision_log.py),
exactly as the workbench's finding decisions: a campaign is subject ``campaign`` (v1 = its definition), each
item is subject ``campaign_item`` (v1 = the snapshot of the held access and its evidence, then one version
per decision), an input-attribute review is subject ``attribute_review`` with one ``attribute`` subject per
attribute. Nothing is updated in place; every row names its actor. Items are published keyed by the campaign
id and the campaign's own record last, on the same partition: once the campaign is visible in the store,
all its items are (the writer stores a partition in order).

On sign-off every revoke becomes a ``RemediationRequest`` on ``agentgov.remediations.v1``, the workbench's
topic; agentgov changes no access itself.

Example::

    svc = RecertService(review_service, recert_store, policy)
    c = svc.create(actor, name="Q4 tier>=2", owner="alice", due_at_ms=..., scope=Scope(min_tier=2))
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from ..errors import PublishError
from ..scoring.policy import GovernancePolicy
from .model import Actor, Conflict, ReviewError, decision, remediation_id, require_role
from .recert import (
    Evidence,
    Scope,
    campaign_id,
    check_bulk,
    check_item_decision,
    check_new_campaign,
    check_signoff,
    item_id,
    recommend,
    split_item_id,
)
from .recert_store import RecertStore
from .service import ReviewService, apply_each, now_ms

log = logging.getLogger(__name__)
MAX_ITEMS = 200_000
BULK_MAX = 50_000


def _evidence(h: dict[str, Any], on_grant: list[tuple[str, str]], on_run: list[tuple[str, str]],
              approved: bool | None) -> Evidence:
    findings = sorted({(c, s, "grant") for c, s in on_grant}
                      | {(c, s, "run") for c, s in on_run if (c, s) not in set(on_grant)})
    ref = f"{h['policy_id']}@{h['policy_version']}" if h["retained"] else ""
    return Evidence(findings=tuple(findings), identity_left=h["identity_left"], left_how=h["left_how"],
                    policy_approved=approved, approved_by=h["approved_by"], policy_ref=ref)


def _input(value: Any) -> str:
    name, source = (value["name"], value["source"]) if isinstance(value, dict) else value
    return f"{name}:{source}"



class RecertService:
    def __init__(self, service: ReviewService, store: RecertStore,
                 has_role: Callable[[str, str], bool | None] | None = None) -> None:
        """``has_role(user, role)``: whether a user is known with a role, None when unknowable (proxy mode);
        the campaign owner and a reassignment's target must be known reviewers when it can tell."""
        self.service, self.store = service, store
        self.settings = service.settings
        self.has_role = has_role

    def _check_reviewer(self, user: str, what: str) -> None:
        """A campaign owned by, or an item handed to, somebody who cannot decide it can never be finished:
        sign-off needs every item decided and nothing cancels a campaign."""
        known = self.has_role(user, "reviewer") if self.has_role else None
        if known is False:
            raise ReviewError(f"{what} {user!r} is not a known user with the reviewer role")

    @property
    def governance(self) -> GovernancePolicy:
        """The governance policy the service's rules read."""
        return self.service.policy.governance

    # -- publishing -------------------------------------------------------------------------------
    def _publish_many(self, key: str, records: list[dict[str, Any]]) -> None:
        self._produce_all(self.settings.topic_decisions, "review_decision", [(key, r) for r in records])

    def _produce_all(self, topic: str, record: str, keyed: list[tuple[str, dict[str, Any]]]) -> None:
        """Produce every (key, record) and wait for each delivery; a full local queue waits for deliveries to
        drain (a campaign's sign-off may publish 200,000 remediation requests), never fails the request."""
        serde, producer, errors = self.service.serdes[record], self.service.producer, []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(str(err))

        for key, value in keyed:
            payload = serde.encode(value)
            while True:
                try:
                    producer.produce(topic, payload, key=key.encode(), on_delivery=delivered)
                    break
                except BufferError:  # local queue full: let deliveries drain
                    producer.poll(0.1)
            producer.poll(0)
        left = producer.flush(120)
        if left or errors:
            raise PublishError(f"could not publish to {topic}: {errors[:3] or 'timed out'}", topic=topic)

    # -- campaigns --------------------------------------------------------------------------------
    def create(self, actor: Actor, *, name: str, owner: str, due_at_ms: int, scope: Scope,
               on_timeout: str = "none") -> dict[str, Any]:
        t = now_ms()
        check_new_campaign(actor, name=name, owner=owner, due_at_ms=due_at_ms, now_ms=t, on_timeout=on_timeout)
        self._check_reviewer(owner.strip(), "the campaign owner")
        scope.check()
        started = time.perf_counter()
        held = self.store.holdings(scope, t, limit=MAX_ITEMS + 1)
        if len(held) > MAX_ITEMS:
            raise ReviewError(f"more than {MAX_ITEMS} held access in scope; narrow the scope")
        by_event, by_run = self.store.findings_for([h["event_id"] for h in held], [h["run_id"] for h in held])
        read_s = time.perf_counter() - started
        cid = campaign_id()
        records, recs = [], {"revoke": 0, "certify": 0, "none": 0}
        for n, h in enumerate(held, 1):
            approved = self.governance.version_approved(h["policy_id"], h["policy_version"]) if h["retained"] else None
            ev = _evidence(h, by_event.get(h["event_id"], []), by_run.get(h["run_id"], []), approved)
            rec, reasons = recommend(ev)
            recs[rec] += 1
            payload = {
                "campaign_id": cid, "target_id": h["target_id"], "system": h["system"], "access": h["access"],
                "grant_event_id": h["event_id"], "grant_run_id": h["run_id"], "agent_id": h["agent_id"],
                "grant_action": h["action"], "tier": str(h["tier"]), "granted_at": str(h["granted_at_ms"]),
                "workflow_id": h["workflow_id"] if h["retained"] else "", "policy_ref": ev.policy_ref,
                "approved_by": h["approved_by"] or "", "authority": h["authority"],
                "identity_left": "1" if ev.identity_left else "0", "left_how": ev.left_how,
                "evidence_retained": "1" if h["retained"] else "0",
                "findings": json.dumps([list(f) for f in ev.findings]),
                "inputs": json.dumps([_input(i) for i in h["inputs_used"] or []]),
                "recommendation": rec, "reasons": json.dumps(reasons), "assignee": owner.strip()}
            records.append(decision("campaign.snapshot", "campaign_item", item_id(cid, n), 1, actor, t,
                                    to_state="pending", payload=payload))
        header = {"name": name.strip(), "owner": owner.strip(), "created_by": actor.user, "created_at": str(t),
                  "due_at": str(due_at_ms), "scope": scope.describe(), "item_count": str(len(records)),
                  "on_timeout": on_timeout, "policy_version": self.service.policy.version,
                  **{f"recommended_{k}": str(v) for k, v in recs.items()}, **scope.as_payload()}
        records.append(decision("campaign.create", "campaign", cid, 1, actor, t, to_state="open", payload=header))
        snap_s = time.perf_counter() - started
        self._publish_many(cid, records)
        publish_s = time.perf_counter() - started
        self.service.wait_stored(cid, 1, seconds=max(self.settings.review_store_wait_seconds, 5 + len(records) / 2000))
        self._count("campaign.create")
        log.info("campaign created", extra={"kv": {
            "campaign": cid, "actor": actor.user, "items": len(records) - 1, "read_s": round(read_s, 2),
            "snapshot_s": round(snap_s, 2), "published_s": round(publish_s, 2),
            "stored_s": round(time.perf_counter() - started, 2)}})
        return {"campaign_id": cid, "items": len(records) - 1, "recommended": recs}

    def decide(self, actor: Actor, iid: str, action: str, expected_version: int, *, justification: str | None,
               reassign_to: str | None = None, end_ms: int | None = None,
               campaign: dict[str, Any] | None = None) -> dict[str, Any]:
        cid, _ = split_item_id(iid)
        campaign = campaign or self.store.campaign(cid)
        if campaign is None:
            raise ReviewError(f"no such campaign {cid}")
        with self.service.writing(iid):
            item = self.store.item(iid)
            if item is None:
                raise ReviewError(f"no such item {iid}")
            if item["version"] != expected_version:
                raise Conflict(f"item changed since the page was loaded: it is {item['state']} at version "
                               f"{item['version']}", state=item["state"], version=item["version"],
                               assignee=item["assignee"])
            t = now_ms()
            to_state = check_item_decision(
                actor, state=item["state"], assignee=item["assignee"], owner=campaign["owner"],
                campaign_state=campaign["state"], action=action, justification=justification,
                certify_needs_justification=self.governance.review.certify_justification_required,
                reassign_to=reassign_to, end_ms=end_ms, now_ms=t, due_at_ms=campaign["due_at"],
                target=item["target_id"], approved_by=item.get("approved_by") or "")
            if action == "reassign":
                self._check_reviewer((reassign_to or "").strip(), "reassign to:")
            payload = {"campaign_id": cid, "assignee": (reassign_to or "").strip() or item["assignee"],
                       "recommendation": item["recommendation"], "target_id": item["target_id"],
                       "system": item["system"], "access": item["access"],
                       "end_date": str(end_ms) if action == "revoke" and end_ms else None}
            record = decision(f"campaign.{action}", "campaign_item", iid, item["version"] + 1, actor, t,
                              from_state=item["state"], to_state=to_state,
                              comment=(justification or "").strip() or None, payload=payload)
            self._publish_many(cid, [record])
            self.service.wait_stored(iid, item["version"] + 1)
        self._count(record["kind"])
        log.info("campaign item decided", extra={"kv": {"item": iid, "action": action, "actor": actor.user}})
        return record

    def bulk(self, actor: Actor, cid: str, action: str, selection: dict[str, int], *, justification: str | None,
             end_ms: int | None = None) -> dict[str, Any]:
        """One action on items that share one recommendation (checked on the stored snapshots)."""
        require_role(actor.roles, "reviewer")
        if len(selection) > BULK_MAX:
            raise ReviewError(f"at most {BULK_MAX} items per bulk decision")
        campaign = self.store.campaign(cid)
        if campaign is None:
            raise ReviewError(f"no such campaign {cid}")
        recs = {}
        for iid in selection:
            if split_item_id(iid)[0] != cid:
                raise ReviewError(f"item {iid} is not in campaign {cid}")
            item = self.store.item(iid)
            if item is None:
                raise ReviewError(f"no such item {iid}")
            recs[iid] = item["recommendation"]
        check_bulk(recs, action)
        if action == "reassign":
            raise ReviewError("reassign items one by one")
        return apply_each(selection, lambda iid, version: self.decide(
            actor, iid, action, version, justification=justification, end_ms=end_ms, campaign=campaign))

    def signoff(self, actor: Actor, cid: str, expected_version: int, comment: str | None) -> dict[str, Any]:
        with self.service.writing(cid):
            campaign = self.store.campaign(cid)
            if campaign is None:
                raise ReviewError(f"no such campaign {cid}")
            if campaign["version"] != expected_version:
                raise Conflict(f"campaign changed since the page was loaded (version {campaign['version']})",
                               state=campaign["state"], version=campaign["version"])
            counts = self.store.item_counts(cid).get(cid, {})
            check_signoff(actor, owner=campaign["owner"], campaign_state=campaign["state"],
                          pending=counts.get("pending", 0), comment=comment,
                          holds_access=bool(self.store.items(cid, target=actor.user, limit=1)))
            t = now_ms()
            revoked = self.store.items(cid, state="revoked", limit=MAX_ITEMS)
            requests = [self._remediation(cid, it, actor, t) for it in revoked]
            self._produce_all(self.settings.topic_remediations, "remediation_request",
                              [(req["finding_id"], req) for req in requests])
            record = decision("campaign.signoff", "campaign", cid, campaign["version"] + 1, actor, t,
                              from_state="open", to_state="closed", comment=(comment or "").strip(),
                              payload={"owner": campaign["owner"], "certified": str(counts.get("certified", 0)),
                                       "revoked": str(counts.get("revoked", 0)),
                                       "remediation_requests": str(len(requests)),
                                       "overdue": "1" if t > campaign["due_at"] else "0"})
            self._publish_many(cid, [record])
            self.service.wait_stored(cid, campaign["version"] + 1)
        self._count("campaign.signoff")
        log.info("campaign signed off", extra={"kv": {"campaign": cid, "actor": actor.user,
                                                      "remediations": len(requests)}})
        return {"record": record, "remediation_requests": [r["request_id"] for r in requests]}

    @staticmethod
    def _remediation(cid: str, item: dict[str, Any], actor: Actor, t: int) -> dict[str, Any]:
        worst = next((s for s in ("critical", "high", "medium", "low", "info")
                      if any(f[1] == s for f in item["findings"])), "none")
        end = f" (end of access: {item['end_date']} ms)" if item.get("end_date") else ""
        # One id per revoke decision: a sign-off retried after a failed publish sends the same requests again,
        # which a remediation system dedupes by request_id, not a second set.
        return {"request_id": remediation_id(item["last_decision_id"]),
                "decision_id": item["last_decision_id"],
                "finding_id": item["item_id"], "code": "RECERT-REVOKE", "severity": worst,
                "agent_id": item["agent_id"], "run_id": item["grant_run_id"], "target_id": item["target_id"],
                "related_event_ids": [item["grant_event_id"]], "reason": "recertification_revoke",
                "comment": f"revoke {item['access']} on {item['system']} from {item['target_id']}: "
                           f"{item['last_comment'] or ''}{end}"[:4000],
                "requested_by": item["last_actor"] or actor.user, "requested_at": t}

    def _count(self, kind: str) -> None:
        if self.service.metrics is not None:
            self.service.metrics.decisions.labels(kind=kind).inc()
