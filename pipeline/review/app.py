"""The review workbench app (FastAPI, server-rendered Jinja2 pages beside a JSON API).

Pages live in ``pages.py``, the JSON API in ``api.py``; this module wires them: identity (``auth.py``),
CSRF on every state-changing request, error pages, ``/metrics`` and ``/healthz``. Jinja autoescaping is
on for every template, so agent-supplied text (agent ids, messages, run ids) is rendered inert; every
printed value also has its bidi controls and invisible format characters written out (``\\u202e``)
(:func:`visible`), except form values that must go back to the server unchanged (``|verbatim``).

Example::

    app = create_app(settings, ClickHouseSink.connect(settings))
    uvicorn.run(app, host=settings.review_addr, port=settings.review_port)
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape
from prometheus_client import CollectorRegistry, generate_latest

from .. import __version__
from ..errors import PublishError
from ..inert import INVISIBLE
from ..metrics import ReviewMetrics
from ..scoring.policy import LoadedPolicy, load_policy
from ..settings import Settings
from ..sinks.clickhouse import ClickHouseSink
from .auth import CSRF_FIELD, CSRF_HEADER, Authenticator
from .model import Actor, Conflict, ReviewError
from .service import ReviewService, now_ms
from .store import ReviewStore
from .throttle import FailureThrottle

log = logging.getLogger(__name__)
TEMPLATES = Path(__file__).parent / "templates"


class Unauthenticated(ReviewError):
    status = 401


class CsrfRefused(ReviewError):
    status = 403


class NotPublished(ReviewError):
    """The broker did not take a decision (or its effect): HTTP 503, safe to retry."""

    status = 503


@dataclass
class ReviewContext:
    settings: Settings
    policy: LoadedPolicy
    auth: Authenticator
    store: ReviewStore
    service: ReviewService
    metrics: ReviewMetrics
    templates: Jinja2Templates
    throttle: FailureThrottle  # failed logins per client address (token mode)
    refreshers: list[Callable[[int], None]] = field(default_factory=list)  # more gauges (campaigns.py)
    _refresh_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _refreshed_at: float | None = field(default=None, repr=False)  # monotonic time of the last store read

    def actor(self, request: Request) -> Actor:
        """The authenticated identity of the request, or :class:`Unauthenticated`."""
        host = request.client.host if request.client else None
        actor = self.auth.identify(host, request.headers, request.cookies)
        if actor is None:
            raise Unauthenticated("not authenticated")
        return actor

    async def writer(self, request: Request) -> Actor:
        """The identity of a state-changing request, after its CSRF token checked out."""
        actor = self.actor(request)
        token = request.headers.get(CSRF_HEADER)
        if token is None and "form" in request.headers.get("content-type", ""):
            form = await request.form()
            value = form.get(CSRF_FIELD)
            token = value if isinstance(value, str) else None
        if not self.auth.csrf_ok(actor, token):
            raise CsrfRefused("missing or invalid CSRF token")
        return actor

    def client_address(self, request: Request) -> str:
        """The client address failed logins are held against (:meth:`Authenticator.client_address`)."""
        return self.auth.client_address(request.client.host if request.client else None, request.headers)

    def login_failed(self, host: str, via: str, *, counted: bool = False) -> None:
        """A wrong token (``via`` form or bearer): counted, logged without the token, and held against the
        client address ``host`` (:class:`LoginThrottle`). ``counted``: the throttle already holds it (the
        reservation it took when it let the attempt through), so it is not counted twice."""
        now = time.monotonic()
        failures = self.throttle.failures(host, now) if counted else self.throttle.fail(host, now)
        self.metrics.login_failures.labels(via=via).inc()
        log.warning("failed login", extra={"kv": {"client": host or "-", "via": via, "failures": failures,
                                                  "throttled": failures >= self.throttle.max_failures}})

    def login_outcome(self, request: Request, ok: bool) -> None:
        """The login form's result, for the throttle: the attempt :class:`LoginThrottle` reserved stays a
        failure when the token was wrong, and is given back when it was right, or when the form checks no
        token (proxy mode)."""
        reserved: tuple[str, float] | None = request.scope.get("state", {}).get(LOGIN_RESERVATION)
        if ok or self.settings.review_auth != "token":
            if reserved is not None:
                self.throttle.release(*reserved)
            return
        self.login_failed(reserved[0] if reserved else self.client_address(request), "form",
                          counted=reserved is not None)

    def refresh_metrics(self) -> None:
        """Set the review gauges from the store, at most once per ``review_metrics_refresh_seconds``.

        Called on each scrape of /metrics, which answers without a login (Prometheus scrapes it): a scrape
        inside the interval is served the gauges of the last read, so no rate of requests to /metrics
        becomes a rate of store queries. Concurrent scrapes wait for one read, not one each."""
        with self._refresh_lock:
            now, every = time.monotonic(), self.settings.review_metrics_refresh_seconds
            if self._refreshed_at is not None and now - self._refreshed_at < every:
                return
            self._refreshed_at = now
            self._refresh()

    def _refresh(self) -> None:
        t = now_ms()
        try:
            open_, breached = self.store.open_by_severity(self.policy.governance.review.sla_hours, t)
            counts, expiring = self.store.exception_counts(t)
        except Exception as exc:  # the store may be down; the scrape still answers
            self.metrics.refresh_errors.inc()
            log.warning("review metrics refresh failed", extra={"kv": {"error": str(exc)[:300]}})
            return
        for sev, n in open_.items():
            self.metrics.open_findings.labels(severity=sev).set(n)
            self.metrics.sla_breaches.labels(severity=sev).set(breached[sev])
        for state, n in counts.items():
            self.metrics.exceptions.labels(state=state).set(n)
        self.metrics.exceptions_expiring.set(expiring)
        for refresh in self.refreshers:
            try:
                refresh(t)
            except Exception as exc:
                self.metrics.refresh_errors.inc()
                log.warning("review metrics refresh failed", extra={"kv": {"error": str(exc)[:300]}})


READS = frozenset({"GET", "HEAD", "OPTIONS"})
LOGIN_RESERVATION = "agentgov_login_reservation"  # scope["state"] key: (address, time) LoginThrottle counted


class AuthenticatedWrites:
    """ASGI middleware: a write from nobody is refused (401) before its body is read.

    FastAPI resolves body and ``Form()`` parameters before the handler runs, so the handler's own identity
    check (:meth:`ReviewContext.writer`) came after an anonymous body had been buffered, decoded and
    validated. The identity needs only the peer address, headers and cookies, never the body. ``/login``
    is exempt (its body carries the token). The size of a body is capped before this, by FastAPI's
    ``max_body_size`` (``review_max_body_bytes``)."""

    def __init__(self, app: Any, auth: Authenticator, token_mode: bool) -> None:
        self.app, self.auth, self.token_mode = app, auth, token_mode

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in READS or scope["path"] == "/login":
            await self.app(scope, receive, send)
            return
        request = Request(scope)  # no receive: reading the body here would fail
        host = request.client.host if request.client else None
        if self.auth.identify(host, request.headers, request.cookies) is not None:
            await self.app(scope, receive, send)
            return
        log.info("unauthenticated write refused", extra={"kv": {"method": scope["method"], "path": scope["path"]}})
        response: Response
        if self.token_mode and not scope["path"].startswith("/api/"):
            response = RedirectResponse("/login", status_code=303)
        else:
            response = JSONResponse({"error": "not authenticated"}, status_code=401)
        await response(scope, receive, send)


class LoginThrottle:
    """ASGI middleware (token mode): a client address past ``review_login_max_failures`` failed logins within
    the window gets 429 with ``Retry-After`` for every token it presents (login form or bearer), before any
    is checked; a wrong bearer token is a failed login (the login form's handler reports its own).

    Each attempt let through is counted at once (:meth:`FailureThrottle.reserve`) and given back when the
    token was right: the form's token is checked in the thread pool after this middleware returned to the
    loop, so checking here and counting there let ~50 of 400 concurrent wrong tokens through instead of
    ``max_failures``. The form's handler settles its reservation (:meth:`ReviewContext.login_outcome`).

    Without it, 300 wrong tokens in 12 s were 300 quiet 401s. The address is the TCP peer (uvicorn runs with
    ``proxy_headers=False``) unless ``review_client_address_header`` names the header a trusted TLS-ending
    proxy sets (:meth:`ReviewContext.client_address`): without it, behind a proxy every client shares the
    proxy's address, and one client's wrong tokens lock the others out."""

    def __init__(self, app: Any, ctx: ReviewContext) -> None:
        self.app, self.ctx = app, ctx

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        auth = request.headers.get("authorization", "")
        bearer = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        if bearer is None and not (scope["method"] == "POST" and scope["path"] == "/login"):
            await self.app(scope, receive, send)
            return
        host, now = self.ctx.client_address(request), time.monotonic()
        wait = self.ctx.throttle.reserve(host, now)  # checked and counted in one step
        if wait is not None:
            seconds = max(1, math.ceil(wait))
            response = JSONResponse({"error": f"too many failed logins from this address; retry in {seconds} s"},
                                    status_code=429, headers={"Retry-After": str(seconds)})
            await response(scope, receive, send)
            return
        if bearer is not None:
            if self.ctx.auth.login(bearer) is None:
                self.ctx.login_failed(host, "bearer", counted=True)
            else:
                self.ctx.throttle.release(host, now)
        else:  # the form's token is checked later, in the thread pool: its handler settles the reservation
            scope.setdefault("state", {})[LOGIN_RESERVATION] = (host, now)
        await self.app(scope, receive, send)


def ctx_of(request: Request) -> ReviewContext:
    ctx: ReviewContext = request.app.state.ctx
    return ctx


def _fmt_ms(ms: int | None) -> str:
    """Epoch milliseconds as a UTC time; a value no datetime can hold shows as the number.

    Decisions are append-only: one stored out-of-range value (an end date in year 10000) must not make
    the page that shows it a 500 for good."""
    if ms is None:
        return "-"
    try:
        return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, ValueError, OSError):
        return f"{ms} ms since the epoch (out of range)"


# Bidi embeddings/overrides/isolates/marks, zero-width and other invisible format characters, C0 (but tab and
# newlines) and C1 controls. Autoescaping leaves them alone, and a browser reorders the text they touch:
# "agent-\u202egpj.exe" displays as "agent-exe.jpg". The CLI escapes the same set (pipeline.inert.INVISIBLE).
_INVISIBLE = re.compile(f"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f{INVISIBLE}]")


def _escape_char(m: re.Match[str]) -> str:
    c = ord(m[0])
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def visible(value: Any) -> Any:
    """Jinja ``finalize``: every printed string with its invisible characters written out (``\\u202e``).

    Applied to all output rather than per template so that a new template cannot forget it; markup that a
    filter already built (``|verbatim``) is left as it is."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return _INVISIBLE.sub(_escape_char, value)
    return value


def verbatim(value: Any) -> Markup:
    """HTML-escaped but otherwise unchanged: for form values the server must get back exactly (ids, filters),
    which :func:`visible` would otherwise rewrite. Never for text shown as text."""
    return escape(value)


def _fmt_dt(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"
    return "-" if value is None else str(value)


def create_app(settings: Settings, sink: ClickHouseSink, *, policy: LoadedPolicy | None = None,
               registry: CollectorRegistry | None = None, schema_registry: Any = None) -> FastAPI:
    """Build the app. ``sink`` is a client of the audit store (the app only reads it)."""
    from . import api, campaigns, pages

    policy = policy or load_policy(settings.policy_file)
    metrics = ReviewMetrics(registry or CollectorRegistry())
    store = ReviewStore(sink)
    templates = Jinja2Templates(directory=str(TEMPLATES))
    templates.env.autoescape = True  # every template, whatever its extension
    templates.env.finalize = visible
    templates.env.filters["verbatim"] = verbatim
    templates.env.filters["ms"] = _fmt_ms
    templates.env.filters["dt"] = _fmt_dt
    throttle = FailureThrottle(max_failures=settings.review_login_max_failures,
                               window=settings.review_login_window_seconds,
                               max_addresses=settings.review_login_max_addresses)
    ctx = ReviewContext(settings, policy, Authenticator(settings), store,
                        ReviewService(settings, store, policy, metrics, registry=schema_registry), metrics, templates,
                        throttle)

    app = FastAPI(title="agentgov review", version=__version__,
                  description="Triage findings, record attributable decisions, grant time-boxed exceptions. "
                              "State-changing calls need the X-CSRF-Token header (GET /api/me returns it).",
                  max_body_size=settings.review_max_body_bytes)
    app.state.ctx = ctx

    @app.exception_handler(ReviewError)
    async def review_error(request: Request, exc: ReviewError) -> Response:
        status = getattr(exc, "status", 400)
        body: dict[str, Any] = {"error": exc.message}
        if isinstance(exc, Conflict):
            body.update(current=exc.fields)
        if request.url.path.startswith("/api/") or request.headers.get("accept", "") == "application/json":
            return JSONResponse(body, status_code=status)
        if status == 401 and settings.review_auth == "token":
            return RedirectResponse("/login", status_code=303)
        return templates.TemplateResponse(request, "error.html", {"status": status, "error": exc.message,
                                                                  "current": body.get("current"), "actor": None},
                                          status_code=status)

    @app.exception_handler(PublishError)
    async def publish_error(request: Request, exc: PublishError) -> Response:
        """The broker refused or timed out: 503, saying whether anything was applied, instead of a bare 500.

        A decision is published before its effect (service.py, write-ahead): when the decision itself failed,
        nothing was applied; when its effect failed, the decision stands and the retry publishes the effect."""
        log.warning("publish failed", extra={"kv": {"path": request.url.path, "topic": exc.fields.get("topic"),
                                                    "error": exc.message[:300]}})
        return await review_error(request, NotPublished(
            exc.fields.get("hint") or "the decision could not be published to Kafka; it was not applied; retry"))

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> PlainTextResponse:  # on the loop: it answers even while every pool thread is busy
        return PlainTextResponse("ok")

    @app.get("/metrics", include_in_schema=False)
    def metrics_endpoint() -> Response:
        ctx.refresh_metrics()
        return Response(generate_latest(metrics.registry), media_type="text/plain; version=0.0.4")

    # Inside the headers middleware below (added later, so outer): a 401 gets the same security headers.
    app.add_middleware(AuthenticatedWrites, auth=ctx.auth, token_mode=settings.review_auth == "token")
    if settings.review_auth == "token":  # outside AuthenticatedWrites: a throttled address gets 429, not 401
        app.add_middleware(LoginThrottle, ctx=ctx)

    @app.middleware("http")
    async def headers(request: Request, call_next: Any) -> Response:
        started = time.perf_counter()
        response: Response = await call_next(request)
        response.headers["Content-Security-Policy"] = ("default-src 'self'; script-src 'none'; object-src 'none'; "
                                                       "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'")
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Cache-Control"] = "no-store"
        log.debug("request", extra={"kv": {"method": request.method, "path": request.url.path,
                                           "status": response.status_code,
                                           "ms": round((time.perf_counter() - started) * 1000, 1)}})
        return response

    pages.register(app)
    api.register(app, prefix="/api")
    campaigns.install(app, ctx)
    return app
