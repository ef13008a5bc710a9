"""The wire contract, loaded from ``schemas/*.avsc`` on disk and never inlined in Python.

``schemas/<record>.avsc`` is the current version; ``schemas/history/<record>.vN.avsc`` keeps every
version ever published. Each version is known by its CRC-64-AVRO fingerprint (single-object encoding).

Example::

    schemas = SchemaSet.load()
    schemas.transition.fingerprint       # 8 bytes, little-endian
"""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from fastavro import parse_schema
from fastavro.schema import fingerprint, to_parsing_canonical_form

from .errors import ConfigError

TRANSITION = "agent_transition"
ASSESSMENT = "risk_assessment"
_VERSIONED = re.compile(r"^(?P<record>[a-z_]+)\.v(?P<version>\d+)\.avsc$")


def schema_dir() -> Path:
    """``schemas/`` beside the package (source checkout or image), or ``AGENTGOV_SCHEMA_DIR``."""
    env = os.environ.get("AGENTGOV_SCHEMA_DIR")
    path = Path(env) if env else Path(__file__).resolve().parent.parent / "schemas"
    if not path.is_dir():
        raise ConfigError(f"schema directory not found: {path}", path=str(path))
    return path


def _strip_logical(node: Any) -> Any:
    """Drop ``logicalType`` so Python sees int millis and plain strings (the bytes are identical)."""
    if isinstance(node, dict):
        return {k: _strip_logical(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_strip_logical(v) for v in node]
    return node


@dataclass(frozen=True)
class SchemaVersion:
    """One version of one record: its JSON text, parsed forms and fingerprint."""

    record: str
    version: int
    raw: dict[str, Any]
    parsed: Any = field(repr=False)  # logical types stripped: what the hot path decodes with
    fingerprint: bytes = b""  # CRC-64-AVRO, little-endian, as in single-object encoding
    canonical: str = ""

    def json(self) -> str:
        return json.dumps(self.raw, separators=(",", ":"))


def _named(raw: dict[str, Any], named: dict[str, Any]) -> Any:
    return parse_schema(_strip_logical(copy.deepcopy(raw)), named_schemas=named)


def _fingerprint(canonical: str) -> bytes:
    return int(fingerprint(canonical, "CRC-64-AVRO"), 16).to_bytes(8, "little")


def _expand(raw: dict[str, Any], types: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Inline named-type references so the schema stands alone (OCF header, registry)."""
    seen: set[str] = set()

    def walk(node: Any, ns: str) -> Any:
        if isinstance(node, str):
            full = node if "." in node else f"{ns}.{node}"
            if full in types and full not in seen:
                inlined = copy.deepcopy(types[full])
                inlined["namespace"] = full.rsplit(".", 1)[0]
                return walk(inlined, inlined["namespace"])
            return node
        if isinstance(node, list):
            return [walk(n, ns) for n in node]
        if isinstance(node, dict):
            if node.get("type") in ("record", "enum", "fixed") and "name" in node:
                ns = node.get("namespace", ns)
                full = node["name"] if "." in node["name"] else f"{ns}.{node['name']}"
                if full in seen:  # defined earlier in this schema: refer to it by name
                    return full
                seen.add(full)
            return {k: (walk(v, ns) if k in ("type", "items", "values", "fields") else v) for k, v in node.items()}
        return node

    return walk(copy.deepcopy(raw), raw.get("namespace", ""))


def _collect_named(node: Any, ns: str, out: dict[str, dict[str, Any]]) -> None:
    if isinstance(node, list):
        for n in node:
            _collect_named(n, ns, out)
    elif isinstance(node, dict):
        if node.get("type") in ("record", "enum", "fixed") and "name" in node:
            ns = node.get("namespace", ns)
            out[f"{ns}.{node['name']}"] = node
        for key in ("type", "items", "values", "fields"):
            if key in node:
                _collect_named(node[key], ns, out)


def _version(record: str, version: int, raw: dict[str, Any], types: dict[str, dict[str, Any]]) -> SchemaVersion:
    expanded = _expand(raw, types)
    parsed = _named(expanded, {})
    canonical = to_parsing_canonical_form(parse_schema(copy.deepcopy(expanded)))
    return SchemaVersion(record, version, expanded, parsed, _fingerprint(canonical), canonical)


@dataclass(frozen=True)
class SchemaSet:
    """Every known version of every record, indexed by fingerprint."""

    versions: dict[str, dict[int, SchemaVersion]]
    by_fingerprint: dict[bytes, SchemaVersion]

    @classmethod
    def load(cls, directory: Path | None = None) -> SchemaSet:
        return _load(directory or schema_dir())

    def latest(self, record: str) -> SchemaVersion:
        versions = self.versions[record]
        return versions[max(versions)]

    @property
    def transition(self) -> SchemaVersion:
        return self.latest(TRANSITION)

    @property
    def assessment(self) -> SchemaVersion:
        return self.latest(ASSESSMENT)


@cache
def _load(directory: Path) -> SchemaSet:
    history = directory / "history"
    raws: dict[str, dict[int, dict[str, Any]]] = {}
    for path in sorted(history.glob("*.avsc")):
        m = _VERSIONED.match(path.name)
        if not m:
            raise ConfigError(f"schema history file not named <record>.vN.avsc: {path.name}")
        raws.setdefault(m["record"], {})[int(m["version"])] = json.loads(path.read_text())
    for record, history_versions in raws.items():
        current = directory / f"{record}.avsc"
        if not current.exists() or json.loads(current.read_text()) != history_versions[max(history_versions)]:
            raise ConfigError(f"{current} must equal the newest file in history/ for {record}")
    # Named types defined by the latest transition are visible to the assessment schema.
    types: dict[str, dict[str, Any]] = {}
    _collect_named(raws[TRANSITION][max(raws[TRANSITION])], "", types)
    versions: dict[str, dict[int, SchemaVersion]] = {}
    by_fp: dict[bytes, SchemaVersion] = {}
    for record, items in raws.items():
        for version, raw in items.items():
            sv = _version(record, version, raw, types)
            versions.setdefault(record, {})[version] = sv
            by_fp[sv.fingerprint] = sv
    return SchemaSet(versions, by_fp)
