"""Schemathesis against the review API's OpenAPI document, signed in as a reviewer+approver with a valid
CSRF token (so writes reach the service, Kafka and the store): no request may end in a 5xx."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings

from pipeline.publisher import TransitionPublisher
from pipeline.review.model import Actor
from pipeline.runner import Pipeline
from pipeline.settings import Settings

from .review_harness import USERS, make_app, review_overrides, transient_chain

pytestmark = pytest.mark.integration


def test_review_api_never_answers_5xx(settings_factory: Callable[..., Settings],
                                      pipeline_factory: Callable[..., Pipeline],
                                      publisher_factory: Callable[..., TransitionPublisher]) -> None:
    settings = settings_factory(**review_overrides())
    pipe = pipeline_factory(settings)
    pub = publisher_factory(settings)
    for d in transient_chain("agent-fuzz", f"run-{uuid.uuid4().hex[:6]}"):
        pub.publish(d)
    pub.producer.flush(10)
    app = make_app(pipe, settings)
    rita = app.state.ctx.auth.login(USERS["rita"][0])  # the CSRF token is bound to the credential
    assert rita is not None and rita == Actor("rita", tuple(USERS["rita"][1]))
    auth = {"Authorization": f"Bearer {USERS['rita'][0]}", "X-CSRF-Token": app.state.ctx.auth.csrf_token(rita)}
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    seen: dict[str, int] = {}

    for operation in operations:
        @given(case=operation.as_strategy())
        @hsettings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: Any) -> None:
            response = case.call(headers=dict(auth))
            seen[f"{case.method} {case.path}"] = seen.get(f"{case.method} {case.path}", 0) + 1
            assert response.status_code < 500, (case.method, case.formatted_path, response.status_code,
                                                response.text[:500])

        check()
    assert len(seen) == len(operations)
