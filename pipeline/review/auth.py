"""Who is asking: identities from an authenticating proxy or from tokens, roles, sessions and CSRF tokens.

Proxy mode (production): oauth2-proxy or any OIDC proxy authenticates the user and passes
``X-Forwarded-User`` and ``X-Forwarded-Groups``. Those headers are trusted only when the TCP peer is one of
``review_trusted_proxies``; from anywhere else they are ignored and the request is unauthenticated.
Token mode (local use, tests): ``Authorization: Bearer <token>``, or a signed session cookie set by the
login form. The actor of every decision is the identity found here, never a form field.

Sessions: the cookie is ``b64(user).issued_ms.nonce.HMAC(user, issued, nonce)``. It is refused after
``review_session_max_age_seconds``, and logout revokes its nonce on the server (in memory until the
session would have expired anyway; a restart forgets revocations, the age limit still holds).

CSRF: every state-changing request must carry ``csrf_token`` (form field) or ``X-CSRF-Token`` (header),
an HMAC of the user and the credential (session nonce or token digest) under the app's secret, so a token
dies with its session. A cross-site page can make the browser send the cookie, but it cannot read the
token. Behind a proxy the session is the proxy's; the token is then per user.

Example::

    auth = Authenticator(settings)
    actor = auth.identify(client_host, headers, cookies)   # Actor | None
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import threading
import time
from collections.abc import Mapping

from ..errors import ConfigError
from ..settings import Settings
from .model import ROLES, Actor, ascii_digits

SESSION_COOKIE = "agentgov_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"


class Authenticator:
    """Resolves the identity of a request according to ``settings.review_auth``."""

    def __init__(self, settings: Settings) -> None:
        self.mode = settings.review_auth
        secret = settings.review_secret.get_secret_value() if settings.review_secret else secrets.token_hex(32)
        self._key = hashlib.sha256(secret.encode()).digest()
        self._tokens = {hashlib.sha256(t.get_secret_value().encode()).digest(): user
                        for user, t in settings.review_tokens.items()}
        self._users = {u: tuple(r for r in ROLES if r in roles) for u, roles in settings.review_users.items()}
        for user, roles in settings.review_users.items():
            unknown = sorted(set(roles) - set(ROLES))
            if unknown:
                raise ConfigError(f"review_users[{user!r}]: unknown roles {unknown}")
        try:
            self._proxies = [ipaddress.ip_network(p, strict=False) for p in settings.review_trusted_proxies]
        except ValueError as exc:
            raise ConfigError(f"review_trusted_proxies: {exc}") from exc
        self._address_header = (settings.review_client_address_header.lower()
                                if settings.review_client_address_header else None)
        self._user_header = settings.review_user_header.lower()
        self._groups_header = settings.review_groups_header.lower()
        self._group_roles = dict(settings.review_group_roles)
        self.max_age_ms = settings.review_session_max_age_seconds * 1000
        self._revoked: dict[str, int] = {}  # session nonce -> when it would have expired (ms)
        self._revoked_lock = threading.Lock()
        if self.mode == "token" and not self._tokens:
            raise ConfigError("review_auth=token needs AGENTGOV_REVIEW_TOKENS (user -> token)")

    # -- identity -------------------------------------------------------------------------------
    def identify(self, client_host: str | None, headers: Mapping[str, str],
                 cookies: Mapping[str, str]) -> Actor | None:
        if self.mode == "proxy":
            return self._from_proxy(client_host, headers)
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return self.login(auth[7:].strip())
        session = cookies.get(SESSION_COOKIE)
        return self._from_session(session) if session else None

    def trusted(self, client_host: str | None) -> bool:
        if not client_host:
            return False
        try:
            addr = ipaddress.ip_address(client_host)
        except ValueError:
            return False
        return self._is_proxy(addr)

    def _is_proxy(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(addr in net for net in self._proxies)

    def client_address(self, peer: str | None, headers: Mapping[str, str]) -> str:
        """The address a request's failed logins are held against (token mode): the TCP peer; or, when the
        peer is a trusted proxy and ``review_client_address_header`` is set, the rightmost address of that
        header (every line of it, in order) that is not itself a trusted proxy. The entries left of it are
        whatever the client sent, so they are never read. An entry that is not an address, or a header of
        trusted proxies only, leaves the peer's address."""
        if self._address_header is None or not self.trusted(peer):
            return peer or ""
        getlist = getattr(headers, "getlist", None)
        lines = getlist(self._address_header) if getlist else [headers.get(self._address_header, "")]
        for hop in reversed(",".join(lines).split(",")):
            hop = hop.strip()
            if not hop:
                continue
            try:
                addr = ipaddress.ip_address(hop)
            except ValueError:
                break
            if not self._is_proxy(addr):
                return str(addr)
        return peer or ""

    def _from_proxy(self, client_host: str | None, headers: Mapping[str, str]) -> Actor | None:
        if not self.trusted(client_host):
            return None  # identity headers from anyone but the proxy are ignored
        user = headers.get(self._user_header, "").strip()
        if not user or len(user) > 256:
            return None
        groups = [g.strip() for g in headers.get(self._groups_header, "").split(",")]
        roles = {self._group_roles[g] for g in groups if g in self._group_roles}
        return Actor(user, tuple(r for r in ROLES if r in roles))

    def login(self, token: str) -> Actor | None:
        """The user a token belongs to (constant-time lookup by digest), or None."""
        digest = hashlib.sha256(token.encode()).digest()
        for known, user in self._tokens.items():
            if hmac.compare_digest(known, digest):
                return Actor(user, self._users.get(user, ()), session="t:" + digest.hex()[:32])
        return None

    def has_role(self, user: str, role: str) -> bool | None:
        """Whether ``user`` is a known user holding ``role``; None when the app cannot know.

        Token mode knows every user and their roles (``review_tokens``, ``review_users``). Behind a proxy,
        users and groups live in the identity provider and reach the app only with each user's own
        requests, so nothing here can vouch for somebody else."""
        if self.mode == "proxy":
            return None
        return user in self._tokens.values() and role in self._users.get(user, ())

    # -- sessions (token mode) ------------------------------------------------------------------
    def _sign(self, purpose: str, value: str) -> str:
        return hmac.new(self._key, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()

    def session_cookie(self, actor: Actor, now_ms: int | None = None) -> str:
        """A new session for ``actor``: its own nonce, and its issue time so that it expires."""
        user = base64.urlsafe_b64encode(actor.user.encode()).decode()
        issued, nonce = int(time.time() * 1000) if now_ms is None else now_ms, secrets.token_urlsafe(16)
        return f"{user}.{issued}.{nonce}.{self._sign('session', f'{actor.user}|{issued}|{nonce}')}"

    def _from_session(self, cookie: str) -> Actor | None:
        parts = cookie.split(".")
        if len(parts) != 4 or not ascii_digits(parts[1]) or len(parts[1]) > 15:
            return None  # also every cookie of the format before sessions expired (user.signature)
        user_b64, issued, nonce, sig = parts
        try:
            user = base64.urlsafe_b64decode(user_b64.encode()).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        if not _same(sig, self._sign("session", f"{user}|{issued}|{nonce}")):
            return None
        now = int(time.time() * 1000)
        if not int(issued) <= now + 60_000 or now >= int(issued) + self.max_age_ms or user not in self._tokens.values():
            return None
        with self._revoked_lock:
            if nonce in self._revoked:
                return None
        return Actor(user, self._users.get(user, ()), session="s:" + nonce)

    def end_session(self, actor: Actor, cookie: str | None) -> None:
        """Logout: the session's cookie is refused from now on, even a copy taken before."""
        if not actor.session.startswith("s:") or not cookie:
            return
        parts = cookie.split(".")
        now = int(time.time() * 1000)
        issued = int(parts[1]) if len(parts) == 4 and ascii_digits(parts[1]) else now
        expires = issued + self.max_age_ms
        with self._revoked_lock:
            self._revoked = {n: t for n, t in self._revoked.items() if t > now}  # expired ones are refused anyway
            self._revoked[actor.session[2:]] = expires

    # -- CSRF -----------------------------------------------------------------------------------
    def csrf_token(self, actor: Actor) -> str:
        return self._sign("csrf", f"{actor.user}|{actor.session}")

    def csrf_ok(self, actor: Actor, token: str | None) -> bool:
        return bool(token) and _same(str(token), self.csrf_token(actor))


def _same(given: str, expected: str) -> bool:
    """Constant-time equality of a client's string and ours. As bytes: ``hmac.compare_digest`` raises
    TypeError on a ``str`` with a non-ASCII character, which made a tampered cookie or token a 500."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode())
