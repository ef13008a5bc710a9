"""The canonical form is a contract agents in any language implement: orjson's output must equal the
reference definition, JSON with sorted keys, no whitespace, UTF-8 (json.dumps with these options)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.events import _drop_nulls, canonical_bytes

_reference = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)))
_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | _text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_text, children, max_size=4),
    max_leaves=25,
)


@settings(max_examples=400)
@given(st.dictionaries(_text, _values, max_size=8))
def test_canonical_bytes_match_the_reference_definition(doc: dict[str, Any]) -> None:
    doc = {k: v for k, v in doc.items() if k not in ("evidence", "occurred_at")}
    expected = dict(doc)
    expected["evidence"] = {}
    assert canonical_bytes(doc) == _reference(_drop_nulls(expected)).encode()


def test_nulls_dropped_at_any_depth_and_hash_fields_excluded() -> None:
    doc = {"b": None, "a": {"x": None, "y": [{"z": None, "w": 1}]}, "evidence": {"event_hash": "h",
           "signature": "s", "key_id": "k", "prev_event_hash": "p"}, "occurred_at": 5}
    assert canonical_bytes(doc) == b'{"a":{"y":[{"w":1}]},"evidence":{"prev_event_hash":"p"},"occurred_at":5}'
