"""Input-attribute review per workflow: what agents evaluated, what the allowlist permits, what to change.

A review is opened on one workflow and snapshots the attribute usage from the store (subject
``attribute_review``, v1). Reviewers approve or disallow each attribute with a justification (subject
``attribute`` ``<review>/<name>``, one version per decision). *Propose* turns the decisions into a unified
diff of the policy YAML (policy_diff.py), validated with the ``agentgov policy check`` code, and records it.
*Check policy* records which policy version finally included the decisions, once the policy file the app
runs with does. All of it is ``ReviewDecision`` records through Kafka, like every other review decision.

Example::

    rows = attribute_rows(store.attribute_usage("jml-provisioning"), policy.boundary_for("jml-provisioning"))
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from pathlib import Path
from typing import Any

from ..scoring.policy import ResolvedBoundary, load_policy
from .model import MAX_TEXT, Actor, Conflict, ReviewError, decision, require_role
from .policy_diff import check_text, propose, satisfies
from .recert_service import RecertService
from .service import now_ms

log = logging.getLogger(__name__)

VERDICTS = ("approve", "disallow")
MAX_ATTRIBUTES = 500


def attribute_rows(usage: list[dict[str, Any]], boundary: ResolvedBoundary) -> list[dict[str, Any]]:
    """One row per attribute: counts, first/last seen, actions, allowlist status, AG-BND-001/002 drawn.

    ``permitted`` is yes, no, partly (some actions) or unrestricted (no allowlist for those actions).
    AG-BND-001 counts the findings on events where this attribute was outside the action's allowlist."""
    by: dict[str, dict[str, Any]] = {}
    for u in usage:
        r = by.setdefault(u["name"], {"name": u["name"], "events": 0, "first_ms": u["first_ms"],
                                      "last_ms": u["last_ms"], "actions": [], "sources": set(), "bnd001": 0,
                                      "bnd002": 0, "allowed": [], "denied": [], "open": []})
        r["events"] += int(u["n"])
        r["first_ms"], r["last_ms"] = min(r["first_ms"], u["first_ms"]), max(r["last_ms"], u["last_ms"])
        r["actions"].append(u["action"])
        r["sources"].update(u["sources"])
        r["bnd002"] += int(u["bnd002"])
        allowed = boundary.inputs_for(u["action"])
        if allowed is None:
            r["open"].append(u["action"])
        elif u["name"] in allowed:
            r["allowed"].append(u["action"])
        else:
            r["denied"].append(u["action"])
            r["bnd001"] += int(u["bnd001"])
    out = []
    for r in by.values():
        r["permitted"] = ("no" if r["denied"] and not (r["allowed"] or r["open"]) else
                          "partly" if r["denied"] else "unrestricted" if r["open"] and not r["allowed"] else "yes")
        r["sources"] = sorted(r["sources"])
        out.append(r)
    return sorted(out, key=lambda r: (r["permitted"] not in ("no", "partly"), r["name"]))


POLICY_WATCH = Actor("agentgov:policy-watch", ("approver",))
"""The app itself, when it sees a new policy version include a proposed review's decisions."""


class PolicyWatch:
    """Links attribute reviews to the policy version that included them, without a click: a thread checks
    the policy file's content every ``interval`` seconds and, when it changed (and once at start), calls
    :meth:`AttributeReviews.link_included`."""

    def __init__(self, reviews: AttributeReviews, interval: float) -> None:
        self.reviews, self.interval = reviews, interval
        self.stop = threading.Event()
        self._seen: bytes | None = None
        self._thread = threading.Thread(target=self._run, name="policy-watch", daemon=True)

    def start(self) -> PolicyWatch:
        self._thread.start()
        return self

    def check(self) -> list[str]:
        """One pass: link what the file now includes, if the file changed since the last pass."""
        content = self.reviews._policy_path().read_bytes()
        if content == self._seen:
            return []
        linked = self.reviews.link_included()
        self._seen = content
        if linked:
            log.info("attribute reviews linked to the policy in force", extra={"kv": {"reviews": linked}})
        return linked

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self.check()
            except Exception as exc:  # a store or broker hiccup: the next pass tries again
                log.warning("policy watch pass failed", extra={"kv": {"error": str(exc)[:300]}})

    def close(self) -> None:
        self.stop.set()
        self._thread.join(10)


STEPS = {"propose": ("open", "only an open review is proposed"),
         "link": ("proposed", "only a proposed review is linked to a policy version")}


def check_step(rev: dict[str, Any], step: str) -> None:
    """The review's history reads open -> proposed -> included, each step once: only an ``open`` review is
    proposed, only a ``proposed`` one linked to a policy version. Anything else is a :class:`Conflict` (409):
    a second proposal, or one after the review was included, would have reopened a closed review."""
    needs, rule = STEPS[step]
    if rev["state"] != needs:
        raise Conflict(f"{rule}; this one is {rev['state']}", state=rev["state"], version=rev["version"])


def review_id() -> str:
    return f"ARV-{uuid.uuid4().hex[:12]}"


class AttributeReviews:
    """Opening, deciding, proposing and linking attribute reviews."""

    def __init__(self, recert: RecertService) -> None:
        self.recert = recert
        self.store = recert.store

    def _policy_path(self) -> Path:
        return Path(self.recert.service.policy.source)

    def open(self, actor: Actor, workflow: str) -> str:
        require_role(actor.roles, "reviewer")
        workflow = workflow.strip()
        if not workflow:
            raise ReviewError("choose a workflow")
        loaded = load_policy(self._policy_path())
        rows = attribute_rows(self.store.attribute_usage(workflow), loaded.policy.boundary_for(workflow))
        if not rows:
            raise ReviewError(f"no input attributes recorded for workflow {workflow!r}")
        if len(rows) > MAX_ATTRIBUTES:
            raise ReviewError(f"{len(rows)} attributes; at most {MAX_ATTRIBUTES} per review")
        rid, t = review_id(), now_ms()
        payload = {"workflow": workflow, "policy_version": loaded.version, "policy_sha256": loaded.sha256,
                   "rows": json.dumps(rows, separators=(",", ":"))}
        record = decision("attributes.open", "attribute_review", rid, 1, actor, t, to_state="open", payload=payload)
        self.recert._publish_many(rid, [record])
        self.recert.service.wait_stored(rid, 1)
        return rid

    def review(self, rid: str) -> dict[str, Any] | None:
        subjects = self.store.subjects("attribute_review", rid)
        head = next((s for s in subjects if s["subject_id"] == rid), None)
        if head is None:
            return None
        first = self.store.history_prefix("attribute_review", rid)
        opened = next(h for h in first if h["subject_version"] == 1)["payload"]
        rows = json.loads(opened["rows"])
        decided = {s["subject_id"].split("/", 1)[1]: s for s in self.store.subjects("attribute", f"{rid}/")}
        for r in rows:
            d = decided.get(r["name"])
            r["decision"] = d["state"] if d else ""
            r["decided_by"] = d["actor"] if d else ""
            r["justification"] = d["comment"] if d else ""
            r["version"] = int(d["version"]) if d else 0
        proposals = [h for h in first if h["kind"] == "attributes.propose"]
        included = [h for h in first if h["kind"] == "attributes.included"]
        return {"review_id": rid, "workflow": opened["workflow"], "opened_policy_version": opened["policy_version"],
                "state": head["state"], "version": int(head["version"]), "rows": rows, "proposals": proposals,
                "included": included[-1] if included else None,
                "history": sorted(first + self.store.history_prefix("attribute", f"{rid}/"),
                                  key=lambda h: (h["decided_at"], h["subject_id"], h["subject_version"]))}

    def decide(self, actor: Actor, rid: str, name: str, verdict: str, expected_version: int,
               justification: str) -> None:
        require_role(actor.roles, "reviewer")
        if verdict not in VERDICTS:
            raise ReviewError(f"unknown decision {verdict!r}; expected approve or disallow")
        if not justification.strip() or len(justification) > MAX_TEXT:
            raise ReviewError("an attribute decision needs a justification")
        rev = self.review(rid)
        if rev is None:
            raise ReviewError(f"no such attribute review {rid}")
        if rev["included"] is not None:
            raise ReviewError("the review's decisions are already included in a policy version; open a new review")
        row = next((r for r in rev["rows"] if r["name"] == name), None)
        if row is None:
            raise ReviewError(f"attribute {name!r} is not in review {rid}")
        sid = f"{rid}/{name}"
        with self.recert.service.writing(sid):
            state, version, _ = self.recert.service.store.state("attribute", sid)
            if version != expected_version:
                raise ReviewError(f"attribute decision changed since the page was loaded (version {version})")
            record = decision(f"attribute.{verdict}", "attribute", sid, version + 1, actor, now_ms(),
                              from_state=None if state == "new" else state,
                              to_state="approved" if verdict == "approve" else "disallowed",
                              comment=justification.strip(),
                              payload={"review_id": rid, "workflow": rev["workflow"], "attribute": name,
                                       "permitted": row["permitted"], "bnd001": str(row["bnd001"])})
            self.recert._publish_many(rid, [record])
            self.recert.service.wait_stored(sid, version + 1)

    @staticmethod
    def _decisions(rev: dict[str, Any]) -> tuple[dict[str, str], dict[str, set[str]]]:
        verdicts = {r["name"]: ("approve" if r["decision"] == "approved" else "disallow")
                    for r in rev["rows"] if r["decision"]}
        usage = {r["name"]: set(r["actions"]) for r in rev["rows"]}
        return verdicts, usage

    def propose(self, actor: Actor, rid: str) -> dict[str, Any]:
        """Diff the policy file against the decisions, validate it, record the proposal."""
        require_role(actor.roles, "reviewer")
        rev = self.review(rid)
        if rev is None:
            raise ReviewError(f"no such attribute review {rid}")
        check_step(rev, "propose")
        verdicts, usage = self._decisions(rev)
        if not verdicts:
            raise ReviewError("decide at least one attribute first")
        text = self._policy_path().read_text()
        new_text, diff, notes = propose(text, rev["workflow"], verdicts, usage, rid)
        check = check_text(new_text)  # raises ConfigError naming the field, as `agentgov policy check` does
        missing = satisfies(new_text, rev["workflow"], verdicts, usage)
        if diff and missing:
            notes += [f"not covered by the diff: {m}" for m in missing]
        with self.recert.service.writing(rid):
            self._unchanged(rid, rev, "propose")
            record = decision("attributes.propose", "attribute_review", rid, rev["version"] + 1, actor, now_ms(),
                              from_state=rev["state"], to_state="proposed",
                              payload={"workflow": rev["workflow"], "diff": diff, "notes": json.dumps(notes),
                                       "check": check.splitlines()[1].strip() if diff else "",
                                       "decisions": json.dumps(verdicts, sort_keys=True)})
            self.recert._publish_many(rid, [record])
            self.recert.service.wait_stored(rid, rev["version"] + 1)
        return {"diff": diff, "notes": notes, "check": check}

    def _unchanged(self, rid: str, rev: dict[str, Any], step: str) -> None:
        """Under the write lock: the review is still what ``rev`` read before it, and may take ``step``; a
        proposal or link recorded meanwhile wins (409)."""
        now = self.review(rid)
        if now is None or (now["state"], now["version"]) != (rev["state"], rev["version"]):
            check_step(now or rev, step)  # says why, when the step no longer applies
            raise Conflict("the review changed meanwhile; reload it",
                           state=now["state"] if now else "", version=now["version"] if now else 0)

    def link_included(self) -> list[str]:
        """Link every proposed review whose decisions the policy file in force now includes (the policy
        watch calls it when the file changes); returns the review ids linked. Attributed to
        :data:`POLICY_WATCH`, so the history says the link was observed, not clicked."""
        linked = []
        for row in self.store.subjects("attribute_review", "ARV-"):
            if row["state"] != "proposed":
                continue
            try:
                self.link_policy(POLICY_WATCH, row["subject_id"])
            except ReviewError:
                continue  # not included yet (or changed meanwhile): the next change of the file tries again
            linked.append(row["subject_id"])
        return linked

    def link_policy(self, actor: Actor, rid: str) -> dict[str, Any]:
        """Record the policy version in force that includes every decision (refused while one is missing)."""
        require_role(actor.roles, "reviewer", "approver")
        rev = self.review(rid)
        if rev is None:
            raise ReviewError(f"no such attribute review {rid}")
        check_step(rev, "link")
        verdicts, usage = self._decisions(rev)
        if not verdicts:
            raise ReviewError("no decisions to link")
        loaded = load_policy(self._policy_path())
        missing = satisfies(self._policy_path().read_text(), rev["workflow"], verdicts, usage)
        if missing:
            raise ReviewError(f"policy version {loaded.version} does not include the decisions yet: "
                              + "; ".join(missing[:5]))
        with self.recert.service.writing(rid):
            self._unchanged(rid, rev, "link")
            record = decision("attributes.included", "attribute_review", rid, rev["version"] + 1, actor, now_ms(),
                              from_state=rev["state"], to_state="included",
                              payload={"policy_version": loaded.version, "policy_sha256": loaded.sha256,
                                       "decisions": json.dumps(verdicts, sort_keys=True)})
            self.recert._publish_many(rid, [record])
            self.recert.service.wait_stored(rid, rev["version"] + 1)
        return record
