"""Server-rendered pages: queue, finding, exceptions, login. Plain HTML forms, no JavaScript.

Every POST handler takes its actor from :meth:`ReviewContext.writer` (identity + CSRF); no handler reads
an actor, requester or approver from the form.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from .app import ReviewContext, Unauthenticated, ctx_of
from .auth import SESSION_COOKIE
from .model import (
    CLASSIFICATIONS,
    EXCEPTION_STATUSES,
    FINDING_STATES,
    MAX_DIGITS,
    REASONS,
    REVIEW_SEVERITIES,
    Actor,
    ReviewError,
    ascii_digits,
    check_exception_status,
    exception_status,
    finding_id,
    utc,
)
from .routes import Routes
from .service import now_ms
from .store import QueueFilter, sla

_route = Routes(include_in_schema=False)
register = _route.register

Ctx = Annotated[ReviewContext, Depends(ctx_of)]
PAGE = 50


def _render(ctx: ReviewContext, request: Request, name: str, actor: Actor | None, status: int = 200,
            **values: Any) -> HTMLResponse:
    values.update(actor=actor, csrf=ctx.auth.csrf_token(actor) if actor else "")
    return ctx.templates.TemplateResponse(request, name, values, status_code=status)


def _hours(value: str | None) -> float | None:
    if value is None or value.strip() == "":
        return None
    try:
        if not value.isascii():  # float() reads '٣' as 3, as int() does (model.ascii_digits)
            raise ValueError(value)
        hours = float(value)
    except ValueError as exc:
        raise ReviewError(f"age must be a number of hours, got {value!r}") from exc
    if not 0 <= hours <= 24 * 3650:
        raise ReviewError("age out of range")
    return hours


def queue_filter(severity: list[str], code: list[str], agent: str, workflow: str, status: list[str],
                 assignee: str, max_age_hours: str | None, min_age_hours: str | None) -> QueueFilter:
    codes = [c.strip() for value in code for c in value.split(",") if c.strip()]
    return QueueFilter(severity=[s for s in severity if s], code=codes,
                       agent=agent.strip(), workflow=workflow.strip(),
                       status=[s for s in status if s in FINDING_STATES] or ["new", "acknowledged"],
                       assignee=assignee.strip(), max_age_hours=_hours(max_age_hours),
                       min_age_hours=_hours(min_age_hours))


@_route("GET", "/")
def index() -> RedirectResponse:
    return RedirectResponse("/queue", status_code=303)


# -- login (token mode) ---------------------------------------------------------------------------
@_route("GET", "/login")
def login_page(request: Request, ctx: Ctx) -> HTMLResponse:
    return _render(ctx, request, "login.html", None, mode=ctx.settings.review_auth)


def _secure(ctx: ReviewContext, request: Request) -> bool:
    """Whether the session cookie is sent over HTTPS only: the app is on TLS, or TLS ends at a proxy
    (``review_cookie_secure``; the app cannot tell from a proxy it does not trust for headers)."""
    return ctx.settings.review_cookie_secure or request.url.scheme == "https"


@_route("POST", "/login")
def login(request: Request, ctx: Ctx, token: Annotated[str, Form()] = "") -> Response:
    actor = ctx.auth.login(token) if ctx.settings.review_auth == "token" else None
    ctx.login_outcome(request, actor is not None)  # a failure counted once: LoginThrottle reserved it
    if actor is None:
        return _render(ctx, request, "login.html", None, status=401, error="unknown token",
                       mode=ctx.settings.review_auth)
    response = RedirectResponse("/queue", status_code=303)
    response.set_cookie(SESSION_COOKIE, ctx.auth.session_cookie(actor), httponly=True, samesite="strict",
                        secure=_secure(ctx, request), max_age=ctx.settings.review_session_max_age_seconds)
    return response


@_route("POST", "/logout")
async def logout(request: Request, ctx: Ctx) -> Response:
    actor = await ctx.writer(request)
    ctx.auth.end_session(actor, request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="strict", secure=_secure(ctx, request))
    return response


# -- queue ----------------------------------------------------------------------------------------
@_route("GET", "/queue")
def queue(request: Request, ctx: Ctx, severity: Annotated[list[str], Query()] = [],  # noqa: B006
          code: Annotated[list[str], Query()] = [], agent: str = "", workflow: str = "",  # noqa: B006
          status: Annotated[list[str], Query()] = [], assignee: str = "",  # noqa: B006
          max_age_hours: str | None = None, min_age_hours: str | None = None,
          page: Annotated[int, Query(ge=1, le=10000)] = 1) -> HTMLResponse:
    actor = ctx.actor(request)
    flt = queue_filter(severity, code, agent, workflow, status, assignee, max_age_hours, min_age_hours)
    t = now_ms()
    rows, total = ctx.store.queue(flt, t, limit=PAGE, offset=(page - 1) * PAGE)
    sla_hours = ctx.policy.governance.review.sla_hours
    for r in rows:
        r["id"] = finding_id(r["event_id"], r["code"])
        r["sla"] = sla(r["severity"], r["occurred_at_ms"], sla_hours, t)
        r["age_hours"] = round((t - r["occurred_at_ms"]) / 3_600_000, 1)
    return _render(ctx, request, "queue.html", actor, rows=rows, total=total, page=page, pages=-(-total // PAGE),
                   flt=flt, severities=REVIEW_SEVERITIES, states=FINDING_STATES, classifications=CLASSIFICATIONS,
                   reasons=REASONS, query=str(request.url.query))


@_route("POST", "/queue/bulk")
async def bulk(request: Request, ctx: Ctx) -> HTMLResponse:
    actor = await ctx.writer(request)
    form = await request.form()
    action = str(form.get("action", ""))
    text = {k: str(form.get(k) or "") or None for k in ("classification", "reason", "comment")}
    if form.get("scope") == "matching":
        flt = queue_filter([str(v) for v in form.getlist("severity")], [str(v) for v in form.getlist("code")],
                           str(form.get("agent", "")), str(form.get("workflow", "")),
                           [str(v) for v in form.getlist("status")], str(form.get("assignee", "")),
                           str(form.get("max_age_hours", "")), str(form.get("min_age_hours", "")))
        result = await run_in_threadpool(ctx.service.bulk, actor, action, matching=flt,
                                         classification=text["classification"], reason=text["reason"],
                                         comment=text["comment"])
    else:
        selection: dict[str, int] = {}
        for value in form.getlist("sel"):
            fid, _, version = str(value).rpartition("@")
            if not fid or not ascii_digits(version):
                raise ReviewError(f"bad selection {str(value)[:80]!r}: expected <finding id>@<version of at most "
                                  f"{MAX_DIGITS} digits>")
            selection[fid] = int(version)
        result = await run_in_threadpool(ctx.service.bulk, actor, action, selection=selection,
                                         classification=text["classification"], reason=text["reason"],
                                         comment=text["comment"])
    return _render(ctx, request, "bulk.html", actor, action=action, result=result)


# -- finding --------------------------------------------------------------------------------------
@_route("GET", "/findings/{event_id}/{code}")
def finding(request: Request, ctx: Ctx, event_id: str, code: str) -> HTMLResponse:
    actor = ctx.actor(request)
    f = ctx.store.finding(event_id, code)
    if f is None:
        raise ReviewError(f"no such finding {event_id}/{code}")
    fid = finding_id(event_id, code)
    state, version, assignee = ctx.store.state("finding", fid)
    t = now_ms()
    return _render(ctx, request, "finding.html", actor, f=f, fid=fid, state=state, version=version,
                   assignee=assignee, history=ctx.store.history("finding", fid), trails=ctx.store.trails(f),
                   sla=sla(f["severity"], f["occurred_at_ms"], ctx.policy.governance.review.sla_hours, t),
                   classifications=CLASSIFICATIONS, reasons=REASONS)


@_route("POST", "/findings/{event_id}/{code}")
async def decide_finding(request: Request, ctx: Ctx, event_id: str, code: str,
                         action: Annotated[str, Form()], version: Annotated[int, Form()],
                         classification: Annotated[str | None, Form()] = None,
                         reason: Annotated[str | None, Form()] = None,
                         comment: Annotated[str | None, Form()] = None) -> Response:
    actor = await ctx.writer(request)
    await run_in_threadpool(ctx.service.transition, actor, finding_id(event_id, code), action, version,
                            classification=classification or None, reason=reason or None, comment=comment or None)
    return RedirectResponse(f"/findings/{event_id}/{code}", status_code=303)


# -- exceptions -----------------------------------------------------------------------------------
@_route("GET", "/exceptions")
def exceptions(request: Request, ctx: Ctx, code: str = "", agent: str = "",
               status: str = "", page: Annotated[int, Query(ge=1, le=10000)] = 1) -> HTMLResponse:
    actor = ctx.actor(request)
    check_exception_status(status)
    t = now_ms()
    rows, total = ctx.store.exceptions(t, status=status, limit=PAGE, offset=(page - 1) * PAGE)
    for r in rows:
        r["status"] = exception_status(r, t)
    return _render(ctx, request, "exceptions.html", actor, rows=rows, code=code, agent=agent, status_filter=status,
                   statuses=EXCEPTION_STATUSES, total=total, page=page, pages=max(1, -(-total // PAGE)),
                   max_days=ctx.policy.governance.review.exception_max_days)


def date_ms(value: str, what: str) -> int:
    """Epoch milliseconds of a form's ISO 8601 date or date-time (UTC unless it says otherwise)."""
    try:
        dt = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise ReviewError(f"{what} must be a date or date-time (ISO 8601), got {value!r}") from exc
    try:
        dt = utc(dt)
    except ValueError as exc:
        raise ReviewError(f"{what}: {exc}") from exc
    return int(dt.timestamp() * 1000)


@_route("POST", "/exceptions")
async def request_exception(request: Request, ctx: Ctx, code: Annotated[str, Form()],
                            agent_id: Annotated[str, Form()], justification: Annotated[str, Form()],
                            expires_at: Annotated[str, Form()], workflow_id: Annotated[str, Form()] = "",
                            target_id: Annotated[str, Form()] = "",
                            entitlement: Annotated[str, Form()] = "") -> Response:
    actor = await ctx.writer(request)
    record = await run_in_threadpool(ctx.service.request_exception, actor, code=code, agent_id=agent_id,
                                     justification=justification, expires_at_ms=date_ms(expires_at, "expiry"),
                                     workflow_id=workflow_id or None, target_id=target_id or None,
                                     entitlement=entitlement or None)
    return RedirectResponse(f"/exceptions/{record['exception_id']}", status_code=303)


@_route("GET", "/exceptions/{exception_id}")
def exception_page(request: Request, ctx: Ctx, exception_id: str) -> HTMLResponse:
    actor = ctx.actor(request)
    e = ctx.store.exception(exception_id)
    if e is None:
        raise ReviewError(f"no such exception {exception_id}")
    e["status"] = exception_status(e, now_ms())
    return _render(ctx, request, "exception.html", actor, e=e,
                   versions=ctx.store.exception_versions(exception_id),
                   history=ctx.store.history("exception", exception_id),
                   findings=ctx.store.excepted_findings(exception_id))


@_route("POST", "/exceptions/{exception_id}")
async def decide_exception(request: Request, ctx: Ctx, exception_id: str, action: Annotated[str, Form()],
                           version: Annotated[int, Form()], comment: Annotated[str, Form()] = "") -> Response:
    actor = await ctx.writer(request)
    await run_in_threadpool(ctx.service.decide_exception, actor, exception_id, action, version, comment or None)
    return RedirectResponse(f"/exceptions/{exception_id}", status_code=303)


__all__ = ["Unauthenticated", "register"]
