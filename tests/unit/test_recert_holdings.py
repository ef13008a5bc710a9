"""Recertification's holdings read against a real embedded store (chdb): who has left since a grant.

An identity has left, for a holding, when the latest account change on the holding's own system, or on one
of the policy's identity providers, is a disable or delete stamped after the grant. A legacy application's
account going is not the person leaving (it flagged every holding of an active employee "left", and the
campaign recommended revoking them), and an account created again since is back."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline.review.recert import Scope
from pipeline.review.recert_store import RecertStore
from pipeline.review.store import ReviewStore
from pipeline.scoring.policy import load_policy
from pipeline.sinks.clickhouse import ClickHouseSink, open_embedded

T0 = datetime(2026, 10, 1, tzinfo=UTC)
COLUMNS = ["target_id", "system", "access", "occurred_at", "event_id", "action", "run_id", "agent_id",
           "on_behalf_of", "privilege_tier", "authority", "approved_by", "source_partition"]


@pytest.fixture
def sink(chdb_path: Path) -> ClickHouseSink:
    store = ClickHouseSink(open_embedded(chdb_path), f"r{uuid.uuid4().hex[:12]}")
    store.migrate()
    return store


def change(target: str, system: str, access: str, action: str, day: int, tier: int = 2) -> list[object]:
    return [target, system, access, (T0 + timedelta(days=day)).replace(tzinfo=None), uuid.uuid4().hex, action,
            "run", "agent-jml-01", None, tier, "agent", None, 0]


@pytest.mark.parametrize(("accounts", "left"), [
    ([], ""),                                                              # never left
    ([("legacy-crm", "disable_account", 5)], ""),                         # another application's account
    ([("aws", "disable_account", 5)], "disable_account on aws"),          # the holding's own system
    ([("Entra-ID", "delete_account", 5)], "delete_account on Entra-ID"),  # an identity provider (any case)
    ([("entra-id", "disable_account", 5), ("entra-id", "create_account", 6)], ""),  # re-created: back
    ([("aws", "disable_account", -5)], ""),                               # left before this grant
])
def test_an_identity_has_left_when_its_own_systems_or_an_identity_providers_account_went(
        sink: ClickHouseSink, accounts: list[tuple[str, str, int]], left: str) -> None:
    rows = [change("u-1", "aws", "aws-admin", "grant_entitlement", 0)]
    rows += [change("u-1", system, "user-account", action, day, tier=0) for system, action, day in accounts]
    sink.insert_rows("access_changes", rows, COLUMNS, token=uuid.uuid4().hex)
    store = RecertStore(ReviewStore(sink), load_policy(None).governance.identity_provider)
    now_ms = int((T0 + timedelta(days=30)).timestamp() * 1000)
    [held] = [h for h in store.holdings(Scope(min_tier=2), now_ms) if h["access"] == "aws-admin"]
    assert held["identity_left"] is bool(left)
    assert held["left_how"].startswith(left) if left else held["left_how"] == ""


def test_an_identity_spelt_in_several_cases_is_one_holder(sink: ClickHouseSink) -> None:
    """As the correlator matches identities (docs/guarantees.md): a grant to ``U-Case`` revoked by ``u-case`` is
    not held; ``U-CASE`` disabled on the identity provider is ``u-case`` leaving; an agent is scoped in any case."""
    rows = [change("U-Case", "aws", "aws-admin", "grant_entitlement", 0),
            change("u-case", "aws", "aws-admin", "revoke_entitlement", 1),
            change("u-case", "aws", "aws-billing", "grant_entitlement", 2),
            change("U-CASE", "entra-id", "user-account", "disable_account", 5, tier=0),
            change("u-other", "aws", "aws-admin", "grant_entitlement", 0)]
    sink.insert_rows("access_changes", rows, COLUMNS, token=uuid.uuid4().hex)
    store = RecertStore(ReviewStore(sink), load_policy(None).governance.identity_provider)
    now_ms = int((T0 + timedelta(days=30)).timestamp() * 1000)
    held = {(h["target_id"], h["access"]): h for h in store.holdings(Scope(min_tier=2), now_ms)}
    assert sorted(held) == [("u-case", "aws-billing"), ("u-other", "aws-admin")]
    assert held["u-case", "aws-billing"]["identity_left"] is True
    assert held["u-case", "aws-billing"]["left_how"].startswith("disable_account on entra-id")
    assert held["u-other", "aws-admin"]["identity_left"] is False
    scoped = store.holdings(Scope(min_tier=2, agent="AGENT-JML-01"), now_ms)
    assert sorted((h["target_id"], h["access"]) for h in scoped) == sorted(held)


def test_an_identity_spelt_in_several_unicode_forms_is_one_holder(sink: ClickHouseSink) -> None:
    """As ``events.identity_key`` keys them: ``JOSÉ`` composed (U+00C9) and ``jose`` + U+0301 decomposed are one
    person, and so are full-width letters; the store folds them as the correlator does (``identity_sql``)."""
    composed, decomposed, wide = "JOS\u00c9@corp", "jose\u0301@corp", "\uff2a\uff2f\uff33\u00c9@corp"
    rows = [change(composed, "aws", "aws-admin", "grant_entitlement", 0),
            change(decomposed, "aws", "aws-admin", "revoke_entitlement", 1),   # revoked, in another form
            change(composed, "aws", "aws-billing", "grant_entitlement", 2),
            change(wide, "entra-id", "user-account", "disable_account", 5, tier=0),  # she left, full-width
            change("u-other", "aws", "aws-admin", "grant_entitlement", 0)]
    sink.insert_rows("access_changes", rows, COLUMNS, token=uuid.uuid4().hex)
    store = RecertStore(ReviewStore(sink), load_policy(None).governance.identity_provider)
    now_ms = int((T0 + timedelta(days=30)).timestamp() * 1000)
    held = {(h["target_id"], h["access"]): h for h in store.holdings(Scope(min_tier=2), now_ms)}
    assert sorted(held) == [(composed, "aws-billing"), ("u-other", "aws-admin")]
    assert held[composed, "aws-billing"]["identity_left"] is True
    assert held["u-other", "aws-admin"]["identity_left"] is False
    scoped = store.holdings(Scope(min_tier=2, agent="\uff21GENT-JML-01"), now_ms)  # the agent, full-width A
    assert sorted((h["target_id"], h["access"]) for h in scoped) == sorted(held)
