"""Pages and JSON API of recertification campaigns and input-attribute reviews (docs/recertification.md).

Mounted by the workbench app (``install``): same identities, roles, CSRF and error pages. Every POST takes
its actor from :meth:`ReviewContext.writer`; forms carry the version they were rendered from.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ..metrics import RecertMetrics
from .api import UtcDatetime
from .app import ReviewContext, ctx_of
from .attributes import AttributeReviews, PolicyWatch
from .model import MAX_DIGITS, MAX_TEXT, ReviewError, ascii_digits, whole_number
from .pages import date_ms
from .recert import ITEM_STATES, RECOMMENDATIONS, Scope, progress
from .recert_service import RecertService
from .recert_store import RecertStore
from .routes import Routes
from .service import now_ms

# Route tables added to the app directly (routes.py says why not include_router).
router = Routes(include_in_schema=False)
api = Routes(tags=["recertification"])
Ctx = Annotated[ReviewContext, Depends(ctx_of)]
PAGE = 50


def recert_of(request: Request) -> RecertService:
    svc: RecertService = request.app.state.recert
    return svc


def attrs_of(request: Request) -> AttributeReviews:
    svc: AttributeReviews = request.app.state.attribute_reviews
    return svc


Recert = Annotated[RecertService, Depends(recert_of)]
Attrs = Annotated[AttributeReviews, Depends(attrs_of)]


def install(app: FastAPI, ctx: ReviewContext) -> None:
    """Wire recertification into the workbench app: services, routes, and the gauges refreshed per scrape."""
    recert = RecertService(ctx.service, RecertStore(ctx.store, ctx.policy.governance.identity_provider),
                           has_role=ctx.auth.has_role)
    app.state.recert = recert
    app.state.attribute_reviews = AttributeReviews(recert)
    watch = PolicyWatch(app.state.attribute_reviews, ctx.settings.policy_reload_seconds).start()
    app.router.on_shutdown.append(watch.close)
    metrics = RecertMetrics(ctx.metrics.registry)
    ctx.refreshers.append(lambda t: refresh(recert.store, metrics, t))
    router.register(app)
    api.register(app, prefix="/api")


def refresh(store: RecertStore, metrics: RecertMetrics, t: int) -> None:
    campaigns = store.campaigns()
    counts = store.item_counts()
    by_state = {"open": 0, "closed": 0}
    items = {s: 0 for s in ITEM_STATES}
    overdue = 0
    for c in campaigns:
        by_state[c["state"]] = by_state.get(c["state"], 0) + 1
        if c["state"] == "open":
            for s, n in counts.get(c["campaign_id"], {}).items():
                items[s] += n
            overdue += c["due_at"] < t
    for s, n in by_state.items():
        metrics.campaigns.labels(state=s).set(n)
    for s, n in items.items():
        metrics.items.labels(state=s).set(n)
    metrics.overdue.set(overdue)


def _render(ctx: ReviewContext, request: Request, name: str, status: int = 200, **values: Any) -> HTMLResponse:
    actor = ctx.actor(request)
    values.update(actor=actor, csrf=ctx.auth.csrf_token(actor))
    return ctx.templates.TemplateResponse(request, name, values, status_code=status)


def _int(value: str, what: str) -> int | None:
    if not value.strip():
        return None
    return whole_number(value.strip(), what)


# -- campaign pages -------------------------------------------------------------------------------
@router("GET", "/campaigns")
def campaigns(request: Request, ctx: Ctx, recert: Recert) -> HTMLResponse:
    ctx.actor(request)  # who asks, before the store is read (an anonymous request reads nothing)
    t = now_ms()
    rows = recert.store.campaigns()
    counts = recert.store.item_counts()
    for c in rows:
        c["progress"] = progress(counts.get(c["campaign_id"], {}))
        c["overdue"] = c["state"] == "open" and c["due_at"] < t
    return _render(ctx, request, "campaigns.html", rows=rows)


@router("POST", "/campaigns")
async def create_campaign(request: Request, ctx: Ctx, recert: Recert, name: Annotated[str, Form()],
                          owner: Annotated[str, Form()], due: Annotated[str, Form()],
                          min_tier: Annotated[str, Form()] = "", workflow: Annotated[str, Form()] = "",
                          agent: Annotated[str, Form()] = "", within_days: Annotated[str, Form()] = "",
                          never_certified: Annotated[str, Form()] = "",
                          on_timeout: Annotated[str, Form()] = "none") -> Response:
    actor = await ctx.writer(request)
    scope = Scope(min_tier=_int(min_tier, "tier"), workflow=workflow.strip(), agent=agent.strip(),
                  within_days=_int(within_days, "days"), never_certified=bool(never_certified))
    out = await run_in_threadpool(recert.create, actor, name=name, owner=owner, due_at_ms=date_ms(due, "due date"),
                                  scope=scope, on_timeout=on_timeout)
    return RedirectResponse(f"/campaigns/{out['campaign_id']}", status_code=303)


@router("GET", "/campaigns/{cid}")
def campaign(request: Request, ctx: Ctx, recert: Recert, cid: str, state: str = "", recommendation: str = "",
             page: Annotated[int, Query(ge=1, le=100000)] = 1) -> HTMLResponse:
    ctx.actor(request)  # before the store says whether the campaign exists
    c = recert.store.campaign(cid)
    if c is None:
        raise ReviewError(f"no such campaign {cid}")
    state = state if state in ITEM_STATES else ""
    recommendation = recommendation if recommendation in RECOMMENDATIONS else ""
    items = recert.store.items(cid, state=state, recommendation=recommendation, limit=PAGE,
                               offset=(page - 1) * PAGE)
    prog = progress(recert.store.item_counts(cid).get(cid, {}))
    return _render(ctx, request, "campaign.html", c=c, items=items, progress=prog, page=page, state=state,
                   recommendation=recommendation, states=ITEM_STATES, recommendations=RECOMMENDATIONS,
                   overdue=c["state"] == "open" and c["due_at"] < now_ms(),
                   history=ctx.store.history("campaign", cid),
                   certify_needs_justification=ctx.policy.governance.review.certify_justification_required)


@router("GET", "/campaigns/{cid}/items/{n}")
def item_page(request: Request, ctx: Ctx, recert: Recert, cid: str, n: str) -> HTMLResponse:
    ctx.actor(request)
    iid = f"{cid}/{n}"
    item = recert.store.item(iid)
    c = recert.store.campaign(cid)
    if item is None or c is None:
        raise ReviewError(f"no such item {iid}")
    return _render(ctx, request, "campaign_item.html", c=c, item=item, history=ctx.store.history("campaign_item", iid),
                   certify_needs_justification=ctx.policy.governance.review.certify_justification_required)


@router("POST", "/campaigns/{cid}/items/{n}")
async def decide_item(request: Request, ctx: Ctx, recert: Recert, cid: str, n: str,
                      action: Annotated[str, Form()], version: Annotated[int, Form()],
                      justification: Annotated[str, Form()] = "", reassign_to: Annotated[str, Form()] = "",
                      end_date: Annotated[str, Form()] = "") -> Response:
    actor = await ctx.writer(request)
    end = date_ms(end_date, "end date") if end_date.strip() else None
    await run_in_threadpool(recert.decide, actor, f"{cid}/{n}", action, version,
                            justification=justification or None, reassign_to=reassign_to or None, end_ms=end)
    return RedirectResponse(f"/campaigns/{cid}/items/{n}", status_code=303)


@router("POST", "/campaigns/{cid}/bulk")
async def bulk(request: Request, ctx: Ctx, recert: Recert, cid: str) -> HTMLResponse:
    actor = await ctx.writer(request)
    form = await request.form()
    selection: dict[str, int] = {}
    for value in form.getlist("sel"):
        iid, _, version = str(value).rpartition("@")
        if not iid or not ascii_digits(version):
            raise ReviewError(f"bad selection {str(value)[:80]!r}: expected <item id>@<version of at most "
                              f"{MAX_DIGITS} digits>")
        selection[iid] = int(version)
    end_date = str(form.get("end_date") or "")
    result = await run_in_threadpool(recert.bulk, actor, cid, str(form.get("action", "")), selection,
                                     justification=str(form.get("justification") or "") or None,
                                     end_ms=date_ms(end_date, "end date") if end_date.strip() else None)
    return _render(ctx, request, "campaign_bulk.html", cid=cid, action=str(form.get("action", "")), result=result)


@router("POST", "/campaigns/{cid}/signoff")
async def signoff(request: Request, ctx: Ctx, recert: Recert, cid: str, version: Annotated[int, Form()],
                  comment: Annotated[str, Form()] = "") -> Response:
    actor = await ctx.writer(request)
    await run_in_threadpool(recert.signoff, actor, cid, version, comment or None)
    return RedirectResponse(f"/campaigns/{cid}", status_code=303)


# -- attribute review pages -----------------------------------------------------------------------
@router("GET", "/attributes")
def attributes(request: Request, ctx: Ctx, recert: Recert) -> HTMLResponse:
    ctx.actor(request)
    reviews = recert.store.subjects("attribute_review", "ARV-")
    return _render(ctx, request, "attributes.html", workflows=recert.store.workflows(), reviews=reviews)


@router("POST", "/attributes")
async def open_review(request: Request, ctx: Ctx, attrs: Attrs, workflow: Annotated[str, Form()]) -> Response:
    actor = await ctx.writer(request)
    rid = await run_in_threadpool(attrs.open, actor, workflow)
    return RedirectResponse(f"/attributes/{rid}", status_code=303)


@router("GET", "/attributes/{rid}")
def attribute_review(request: Request, ctx: Ctx, attrs: Attrs, rid: str) -> HTMLResponse:
    ctx.actor(request)
    rev = attrs.review(rid)
    if rev is None:
        raise ReviewError(f"no such attribute review {rid}")
    return _render(ctx, request, "attribute_review.html", rev=rev,
                   policy_version=ctx.policy.version)


@router("POST", "/attributes/{rid}/decide")
async def decide_attribute(request: Request, ctx: Ctx, attrs: Attrs, rid: str, name: Annotated[str, Form()],
                           verdict: Annotated[str, Form()], version: Annotated[int, Form()],
                           justification: Annotated[str, Form()] = "") -> Response:
    actor = await ctx.writer(request)
    await run_in_threadpool(attrs.decide, actor, rid, name, verdict, version, justification)
    return RedirectResponse(f"/attributes/{rid}", status_code=303)


@router("POST", "/attributes/{rid}/propose")
async def propose_change(request: Request, ctx: Ctx, attrs: Attrs, rid: str) -> Response:
    actor = await ctx.writer(request)
    await run_in_threadpool(attrs.propose, actor, rid)
    return RedirectResponse(f"/attributes/{rid}#proposal", status_code=303)


@router("POST", "/attributes/{rid}/link")
async def link_policy(request: Request, ctx: Ctx, attrs: Attrs, rid: str) -> Response:
    actor = await ctx.writer(request)
    await run_in_threadpool(attrs.link_policy, actor, rid)
    return RedirectResponse(f"/attributes/{rid}", status_code=303)


# -- JSON API -------------------------------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NewCampaign(_Body):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    owner: Annotated[str, Field(min_length=1, max_length=200)]
    due_at: UtcDatetime
    min_tier: Annotated[int, Field(ge=0, le=3)] | None = None
    workflow: Annotated[str, Field(max_length=512)] = ""
    agent: Annotated[str, Field(max_length=512)] = ""
    within_days: Annotated[int, Field(ge=1, le=3650)] | None = None
    never_certified: bool = False
    on_timeout: str = Field(default="none", description="Only 'none': no auto-apply on timeout (refused).")


class ItemDecision(_Body):
    action: Annotated[str, Field(pattern="^(certify|revoke|reassign)$")]
    expected_version: Annotated[int, Field(ge=1, le=1_000_000)]
    justification: Annotated[str, Field(max_length=MAX_TEXT)] = ""
    reassign_to: Annotated[str, Field(max_length=200)] = ""
    end_date: UtcDatetime | None = None


class BulkItems(_Body):
    action: Annotated[str, Field(pattern="^(certify|revoke)$")]
    selection: dict[Annotated[str, Field(max_length=64)], Annotated[int, Field(ge=1)]]
    justification: Annotated[str, Field(max_length=MAX_TEXT)] = ""


class Signoff(_Body):
    expected_version: Annotated[int, Field(ge=1, le=1_000_000, description="Campaign version the signer saw.")]
    comment: Annotated[str, Field(max_length=MAX_TEXT, description=(
        "The attestation, in the signer's words (required). In the body, not the URL: a query string lands "
        "in access logs."))] = ""


def _ms_of(dt: datetime) -> int:
    return int((dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp() * 1000)


@api("POST", "/campaigns")
async def api_create(request: Request, ctx: Ctx, recert: Recert, body: NewCampaign) -> dict[str, Any]:
    actor = await ctx.writer(request)
    scope = Scope(min_tier=body.min_tier, workflow=body.workflow, agent=body.agent, within_days=body.within_days,
                  never_certified=body.never_certified)
    return await run_in_threadpool(recert.create, actor, name=body.name, owner=body.owner,
                                   due_at_ms=_ms_of(body.due_at), scope=scope, on_timeout=body.on_timeout)


@api("GET", "/campaigns")
def api_campaigns(request: Request, ctx: Ctx, recert: Recert) -> list[dict[str, Any]]:
    ctx.actor(request)
    counts = recert.store.item_counts()
    return [{**c, "progress": progress(counts.get(c["campaign_id"], {}))} for c in recert.store.campaigns()]


@api("GET", "/campaigns/{cid}/items")
def api_items(request: Request, ctx: Ctx, recert: Recert, cid: str, after: str = "",
              state: str = "", recommendation: str = "",
              limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    """A page of items; pass the last ``item_id`` as ``after`` for the next page."""
    ctx.actor(request)
    items = recert.store.items(cid, after=after, state=state if state in ITEM_STATES else "",
                               recommendation=recommendation if recommendation in RECOMMENDATIONS else "",
                               limit=limit)
    return {"items": items, "next": items[-1]["item_id"] if len(items) == limit else None}


@api("POST", "/campaigns/{cid}/items/{n}")
async def api_decide(request: Request, ctx: Ctx, recert: Recert, cid: str, n: str,
                     body: ItemDecision) -> dict[str, Any]:
    actor = await ctx.writer(request)
    return await run_in_threadpool(recert.decide, actor, f"{cid}/{n}", body.action, body.expected_version,
                                   justification=body.justification or None, reassign_to=body.reassign_to or None,
                                   end_ms=_ms_of(body.end_date) if body.end_date else None)


@api("POST", "/campaigns/{cid}/bulk")
async def api_bulk(request: Request, ctx: Ctx, recert: Recert, cid: str, body: BulkItems) -> dict[str, Any]:
    actor = await ctx.writer(request)
    return await run_in_threadpool(recert.bulk, actor, cid, body.action, body.selection,
                                   justification=body.justification or None)


@api("POST", "/campaigns/{cid}/signoff")
async def api_signoff(request: Request, ctx: Ctx, recert: Recert, cid: str, body: Signoff) -> dict[str, Any]:
    """Close the campaign with the signer's attestation and publish a remediation request per revoked item."""
    actor = await ctx.writer(request)
    return await run_in_threadpool(recert.signoff, actor, cid, body.expected_version, body.comment or None)


@api("GET", "/attributes/{rid}")
def api_attribute_review(request: Request, ctx: Ctx, attrs: Attrs, rid: str) -> dict[str, Any]:
    ctx.actor(request)
    rev = attrs.review(rid)
    if rev is None:
        raise ReviewError(f"no such attribute review {rid}")
    return rev
