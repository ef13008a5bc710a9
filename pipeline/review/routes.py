"""A route table declared at import and added to an app directly, shared by the pages and the JSON API.

Not through ``include_router``: since FastAPI 0.137 an included router rebuilds a shared route cache
lazily on first requests, which hung our multi-app test runs.

Example::

    route = Routes(tags=["review"])

    @route("GET", "/findings")
    def findings(...): ...

    route.register(app, prefix="/api")
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

Handler = Callable[..., Any]


class Routes:
    """Routes with the defaults every one of them gets (``tags``, ``include_in_schema`` ...)."""

    def __init__(self, **defaults: Any) -> None:
        self.defaults = defaults
        self.routes: list[tuple[str, str, Handler, dict[str, Any]]] = []

    def __call__(self, method: str, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        def add(fn: Handler) -> Handler:
            self.routes.append((method, path, fn, kw))
            return fn
        return add

    def register(self, app: FastAPI, prefix: str = "") -> None:
        """Add these routes to ``app``."""
        for method, path, fn, kw in self.routes:
            app.add_api_route(prefix + path, fn, methods=[method], **{**self.defaults, **kw})
