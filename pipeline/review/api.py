"""The JSON API beside the pages (``/api``, OpenAPI at ``/openapi.json``).

Reads need an identity; writes also need the ``X-CSRF-Token`` header (``GET /api/me`` returns it). The
actor is always the authenticated identity: request bodies have no actor field, and unknown fields are
rejected.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, Query, Request, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from .app import ReviewContext, ctx_of
from .model import (
    CLASSIFICATIONS,
    FINDING_STATES,
    MAX_TEXT,
    REVIEW_SEVERITIES,
    ExceptionStatus,
    ReviewError,
    exception_status,
    finding_id,
    utc,
)
from .pages import queue_filter
from .routes import Routes
from .service import BULK_MAX, now_ms
from .store import EXPORT_PAGE, ExportCursor, sla

_route = Routes(tags=["review"])
register = _route.register

Ctx = Annotated[ReviewContext, Depends(ctx_of)]
Text = Annotated[str, Field(max_length=MAX_TEXT)]
Name = Annotated[str, Field(min_length=1, max_length=256)]
UtcDatetime = Annotated[datetime, AfterValidator(utc)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Me(BaseModel):
    user: str
    roles: list[str]
    csrf_token: str


class FindingDecision(_Body):
    action: Literal["acknowledge", "close", "reopen"]
    expected_version: int = Field(ge=0, le=1_000_000, description="Version the client last saw (0 for a new finding).")
    classification: Literal["true_positive", "benign_positive", "false_positive", "duplicate"] | None = None
    reason: Name | None = None
    comment: Text | None = None


class QueueFilterBody(_Body):
    severity: list[Literal["critical", "high", "medium"]] = []
    code: list[Name] = []
    agent: Annotated[str, Field(max_length=256)] = ""
    workflow: Annotated[str, Field(max_length=256)] = ""
    status: list[Literal["new", "acknowledged", "closed"]] = []
    assignee: Annotated[str, Field(max_length=256)] = ""
    max_age_hours: Annotated[float, Field(ge=0, le=87600)] | None = None
    min_age_hours: Annotated[float, Field(ge=0, le=87600)] | None = None


class BulkDecision(_Body):
    action: Literal["acknowledge", "close", "reopen"]
    selection: dict[Name, Annotated[int, Field(ge=0, le=1_000_000)]] | None = Field(
        default=None, max_length=BULK_MAX,
        description=f"finding id -> version the client saw (at most {BULK_MAX}); or give `matching` instead.")
    matching: QueueFilterBody | None = None
    classification: Literal["true_positive", "benign_positive", "false_positive", "duplicate"] | None = None
    reason: Name | None = None
    comment: Text | None = None


class ExceptionRequest(_Body):
    code: Name
    agent_id: Name
    justification: Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]
    expires_at: UtcDatetime = Field(description="Required; at most the policy's review.exception_max_days ahead.")
    workflow_id: Name | None = None
    target_id: Name | None = None
    entitlement: Name | None = None


class ExceptionDecision(_Body):
    action: Literal["approve", "reject", "revoke"]
    expected_version: int = Field(ge=1, le=1_000_000)
    comment: Text | None = None


def _json(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.replace(tzinfo=UTC).isoformat() if isinstance(v, datetime) and v.tzinfo is None
                else v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}


@_route("GET", "/me", response_model=Me)
def me(request: Request, ctx: Ctx) -> Me:
    actor = ctx.actor(request)
    return Me(user=actor.user, roles=list(actor.roles), csrf_token=ctx.auth.csrf_token(actor))


@_route("GET", "/findings")
def findings(request: Request, ctx: Ctx,
             severity: Annotated[list[Literal["critical", "high", "medium"]], Query()] = [],  # noqa: B006
             code: Annotated[list[Annotated[str, Field(max_length=256)]], Query()] = [],  # noqa: B006
             agent: Annotated[str, Query(max_length=256)] = "", workflow: Annotated[str, Query(max_length=256)] = "",
             status: Annotated[list[Literal["new", "acknowledged", "closed"]], Query()] = [],  # noqa: B006
             assignee: Annotated[str, Query(max_length=256)] = "",
             max_age_hours: Annotated[float | None, Query(ge=0, le=87600)] = None,
             min_age_hours: Annotated[float | None, Query(ge=0, le=87600)] = None,
             limit: Annotated[int, Query(ge=1, le=500)] = 50,
             offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0) -> dict[str, Any]:
    """The review queue: open findings (medium and above, not excepted), severity first, then oldest."""
    ctx.actor(request)
    flt = queue_filter(list(severity), list(code), agent, workflow, list(status), assignee,
                       None if max_age_hours is None else str(max_age_hours),
                       None if min_age_hours is None else str(min_age_hours))
    t = now_ms()
    rows, total = ctx.store.queue(flt, t, limit=limit, offset=offset)
    out = []
    for r in rows:
        r["id"] = finding_id(r["event_id"], r["code"])
        r["sla"] = sla(r["severity"], r["occurred_at_ms"], ctx.policy.governance.review.sla_hours, t)
        out.append(_json(r))
    return {"total": total, "findings": out}


@_route("GET", "/findings/{event_id}/{code}")
def finding(request: Request, ctx: Ctx, event_id: str, code: str) -> dict[str, Any]:
    """One finding with its state, SLA, history and run trails."""
    ctx.actor(request)
    f = ctx.store.finding(event_id, code)
    if f is None:
        raise ReviewError(f"no such finding {event_id}/{code}")
    fid = finding_id(event_id, code)
    state, version, assignee = ctx.store.state("finding", fid)
    return {"finding": _json(f), "id": fid, "state": state, "version": version, "assignee": assignee,
            "sla": sla(f["severity"], f["occurred_at_ms"], ctx.policy.governance.review.sla_hours, now_ms()),
            "history": [_json(h) for h in ctx.store.history("finding", fid)],
            "trails": {run: [_json(s) for s in steps] for run, steps in ctx.store.trails(f)}}


@_route("POST", "/findings/{event_id}/{code}/decisions", status_code=201)
async def decide(request: Request, ctx: Ctx, event_id: str, code: str, body: FindingDecision) -> dict[str, Any]:
    """Acknowledge, close (classification, reason and comment required) or reopen. 409 on a stale version."""
    actor = await ctx.writer(request)
    return await run_in_threadpool(ctx.service.transition, actor, finding_id(event_id, code), body.action,
                                   body.expected_version, classification=body.classification, reason=body.reason,
                                   comment=body.comment)


@_route("POST", "/findings/bulk")
async def bulk(request: Request, ctx: Ctx, body: BulkDecision) -> dict[str, Any]:
    """One decision per finding, on a selection or on everything matching a filter."""
    actor = await ctx.writer(request)
    matching = None
    if body.matching is not None:
        m = body.matching
        matching = queue_filter(list(m.severity), m.code, m.agent, m.workflow, list(m.status), m.assignee,
                                None if m.max_age_hours is None else str(m.max_age_hours),
                                None if m.min_age_hours is None else str(m.min_age_hours))
    return await run_in_threadpool(ctx.service.bulk, actor, body.action, selection=body.selection,
                                   matching=matching, classification=body.classification, reason=body.reason,
                                   comment=body.comment)


@_route("GET", "/exceptions")
def exceptions(request: Request, ctx: Ctx,
               status: Annotated[ExceptionStatus | None, Query()] = None,
               limit: Annotated[int, Query(ge=1, le=500)] = 100,
               offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0) -> dict[str, Any]:
    """One page of the latest version of each exception, newest request first, with its status (expired
    follows from the clock); ``total`` counts every exception the filter matches."""
    ctx.actor(request)
    t = now_ms()
    rows, total = ctx.store.exceptions(t, status=status or "", limit=limit, offset=offset)
    return {"exceptions": [dict(_json(e), status=exception_status(e, t)) for e in rows], "total": total,
            "limit": limit, "offset": offset}


@_route("POST", "/exceptions", status_code=201)
async def request_exception(request: Request, ctx: Ctx, body: ExceptionRequest) -> dict[str, Any]:
    """Request an exception; it takes effect only when a different approver approves it."""
    actor = await ctx.writer(request)
    return await run_in_threadpool(ctx.service.request_exception, actor, code=body.code, agent_id=body.agent_id,
                                   justification=body.justification,
                                   expires_at_ms=int(body.expires_at.timestamp() * 1000),
                                   workflow_id=body.workflow_id, target_id=body.target_id,
                                   entitlement=body.entitlement)


@_route("GET", "/exceptions/{exception_id}")
def exception(request: Request, ctx: Ctx, exception_id: str) -> dict[str, Any]:
    ctx.actor(request)
    e = ctx.store.exception(exception_id)
    if e is None:
        raise ReviewError(f"no such exception {exception_id}")
    return {"exception": dict(_json(e), status=exception_status(e, now_ms())),
            "versions": [_json(v) for v in ctx.store.exception_versions(exception_id)],
            "history": [_json(h) for h in ctx.store.history("exception", exception_id)]}


@_route("POST", "/exceptions/{exception_id}/decisions")
async def decide_exception(request: Request, ctx: Ctx, exception_id: str, body: ExceptionDecision) -> dict[str, Any]:
    """Approve or reject (approver role, not the requester) or revoke. 409 on a stale version."""
    actor = await ctx.writer(request)
    return await run_in_threadpool(ctx.service.decide_exception, actor, exception_id, body.action,
                                   body.expected_version, body.comment)


@_route("GET", "/export")
def export(request: Request, response: Response, ctx: Ctx, since: Annotated[UtcDatetime, Query()],
           limit: Annotated[int, Query(ge=1, le=EXPORT_PAGE)] = EXPORT_PAGE,
           after: Annotated[str | None, Query(max_length=2048, description=(
               "The cursor of the next page: the `next` of the `Link` header of the page before."))] = None
           ) -> list[dict[str, Any]]:
    """One page of the decisions and exception versions since ``since``, oldest first (what `agentgov review
    export` writes). When more follow, the response's ``Link`` header (RFC 8288) gives the next page's URL
    with ``rel="next"``, and ``X-Next-Cursor`` its cursor; the last page has neither."""
    ctx.actor(request)
    try:
        cursor = ExportCursor.parse(after) if after is not None else None
    except ValueError as exc:
        raise ReviewError(str(exc)) from exc
    rows, nxt = ctx.store.export(since.replace(tzinfo=None), after=cursor, limit=limit)
    if nxt is not None:
        token = nxt.token()
        url = request.url.include_query_params(after=token, limit=limit)
        response.headers["Link"] = f'<{url.path}?{url.query}>; rel="next"'
        response.headers["X-Next-Cursor"] = token
    return [_json(r) for r in rows]


__all__ = ["CLASSIFICATIONS", "FINDING_STATES", "REVIEW_SEVERITIES", "register"]
