"""Proposed policy change from an input-attribute review: a unified diff of the policy YAML. Pure.

agentgov never rewrites the policy file. This module edits the file's *text* in memory (so comments and
layout survive), only the input lists of one workflow, and returns the diff for the governance team's
change process. The result is validated with the code behind ``agentgov policy check`` and then checked to
do what the decisions ask (:func:`satisfies`).

Decisions, per attribute of a workflow:

    approve   permit it for every action that used it: added to the action's ``input_allowlist`` entry
              when the workflow sets one, else to the workflow's ``default_inputs`` (copied from the
              defaults first when the workflow inherits them)
    disallow  not permitted for any action of the workflow: removed from every list of the workflow that
              names it; where an action is unrestricted (no allowlist), the workflow gets ``default_inputs``
              = the attributes seen and not disallowed

Attribute names are chosen by agents (``inputs_used[].name``), so they are data, never YAML: each is
written as a scalar that parses back to exactly that name (plain when it is an identifier, double-quoted
otherwise), and the parsed proposal must equal the current policy with only the intended input lists and
the version changed (:func:`propose` refuses otherwise). Unquoted, ``x, ssn`` would be two entries and a
newline would start new keys that override the workflow's other limits.

Example::

    new_text, diff, notes = propose(text, "jml-provisioning", {"location": "disallow"}, usage, "ARV-1")
"""

from __future__ import annotations

import copy
import difflib
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .model import ReviewError

WIDTH = 110
_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
"""Names written without quotes (when YAML also reads them as that string: not ``null``, ``yes``...)."""

log = logging.getLogger(__name__)


@dataclass
class Span:
    """Lines [start, end) of a key and its value; ``indent`` of the key."""

    start: int
    end: int
    indent: int


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _meaningful(line: str) -> bool:
    s = line.strip()
    return bool(s) and not s.startswith("#")


def _block_end(lines: list[str], start: int, indent: int) -> int:
    """First line after ``start`` that is meaningful and indented at most ``indent``."""
    i = start + 1
    while i < len(lines):
        if _meaningful(lines[i]) and _indent(lines[i]) <= indent:
            break
        i += 1
    while i > start + 1 and not _meaningful(lines[i - 1]):
        i -= 1  # trailing blank or comment lines belong to what follows
    return i


def _find_key(lines: list[str], key: str, lo: int, hi: int, indent: int | None) -> Span | None:
    pat = re.compile(rf"^( *){re.escape(key)}:(\s|$)")
    for i in range(lo, hi):
        m = pat.match(lines[i])
        if m and (indent is None or len(m.group(1)) == indent):
            ind = len(m.group(1))
            return Span(i, _block_end(lines, i, ind), ind)
    return None


def _child_indent(lines: list[str], span: Span) -> int:
    for i in range(span.start + 1, span.end):
        if _meaningful(lines[i]):
            return _indent(lines[i])
    return span.indent + 2


def _quoted(value: str) -> str:
    """``value`` as a double-quoted YAML scalar on one line (non-ASCII and control characters escaped)."""
    text = yaml.safe_dump(value, default_style='"', width=1 << 30, allow_unicode=False).rstrip("\n")
    if "\n" in text or yaml.safe_load(f"[{text}]") != [value]:
        raise ReviewError(f"cannot write {value[:64]!r} as a YAML scalar")
    return text


def scalar(value: str) -> str:
    """``value`` as a YAML flow scalar that parses back to exactly ``value``.

    Plain for identifiers YAML reads as strings (the policy's own style); double-quoted, with every
    non-ASCII or control character escaped, for anything else. Raises :class:`ReviewError` if the round
    trip fails (it should not, but the proposal's safety rests on it)."""
    if _PLAIN.fullmatch(value) and yaml.safe_load(value) == value:
        return value
    return _quoted(value)


def _flow(key: str, indent: int, values: list[str]) -> list[str]:
    head = " " * indent + f"{key}: ["
    out, line = [], head
    for n, v in enumerate(values):
        piece = scalar(v) + (", " if n < len(values) - 1 else "]")
        if len(line) + len(piece) > WIDTH and line != head:
            out.append(line.rstrip())
            line = " " * (len(head)) + piece
        else:
            line += piece
    if not values:
        line += "]"
    out.append(line)
    return [s + "\n" for s in out]


class PolicyText:
    """The policy file's lines, with the few structural edits a review proposes."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines(keepends=True)
        if self.lines and not self.lines[-1].endswith("\n"):
            self.lines[-1] += "\n"

    def text(self) -> str:
        return "".join(self.lines)

    def _workflow(self, workflow: str) -> Span:
        top = _find_key(self.lines, "workflows", 0, len(self.lines), 0)
        if top is None:
            raise ReviewError("the policy has no workflows: section")
        wf = _find_key(self.lines, workflow, top.start + 1, top.end, _child_indent(self.lines, top))
        if wf is None:
            raise ReviewError(f"workflow {workflow!r} is not in the policy (it runs under the defaults); "
                              "add it by hand first")
        return wf

    def set_list(self, workflow: str, path: tuple[str, ...], values: list[str]) -> None:
        """Set workflows.<workflow>.<path...> to a flow list, creating the keys when missing."""
        span = self._workflow(workflow)
        for depth, key in enumerate(path):
            child = _child_indent(self.lines, span)
            found = _find_key(self.lines, key, span.start + 1, span.end, child)
            last = depth == len(path) - 1
            if found is None:
                insert_at = span.start + 1
                if last:
                    self.lines[insert_at:insert_at] = _flow(key, child, values)
                    return
                self.lines.insert(insert_at, " " * child + f"{key}:\n")
                span = Span(insert_at, insert_at + 1, child)
                continue
            if last:
                self.lines[found.start:found.end] = _flow(key, found.indent, values)
                return
            span = found

    def set_version(self, version: str) -> None:
        for i, line in enumerate(self.lines):
            if re.match(r"^version:\s", line):
                self.lines[i] = f"version: {_quoted(version)}\n"
                return
        raise ReviewError("the policy has no version: line")


def _doc_boundary(doc: dict[str, Any], workflow: str) -> tuple[dict[str, Any], dict[str, Any]]:
    defaults = doc.get("defaults") or {}
    wf = (doc.get("workflows") or {}).get(workflow) or {}
    return defaults, wf


def propose(text: str, workflow: str, decisions: dict[str, str], usage: dict[str, set[str]],
            review_id: str) -> tuple[str, str, list[str]]:
    """(new text, unified diff, notes). ``usage``: attribute -> actions that evaluated it."""
    from ..scoring.policy import parse_policy

    base = parse_policy(text, "<current policy>")
    doc = yaml.safe_load(text)
    b = base.policy.boundary_for(workflow)
    defaults, wf = _doc_boundary(doc, workflow)
    lists: dict[tuple[str, ...], list[str]] = {}
    notes: list[str] = []

    def current(path: tuple[str, ...]) -> list[str]:
        if path not in lists:
            if path == ("default_inputs",):
                src = wf.get("default_inputs", defaults.get("default_inputs")) if "default_inputs" in wf \
                    else defaults.get("default_inputs")
                lists[path] = [str(v) for v in (src or [])]
            else:
                lists[path] = [str(v) for v in ((wf.get("input_allowlist") or {}).get(path[1]) or [])]
        return lists[path]

    wf_actions = set(b.input_allowlist) | {a for acts in usage.values() for a in acts}
    own_allowlist = set(wf.get("input_allowlist") or {})
    if "input_allowlist" not in wf and b.input_allowlist:
        notes.append("the workflow inherits input_allowlist from the defaults; per-action lists are not edited")

    def source(action: str) -> tuple[str, ...] | None:
        if action in b.input_allowlist:
            return ("input_allowlist", action) if action in own_allowlist else None
        return ("default_inputs",) if b.default_inputs is not None else None

    seen = sorted(usage)
    for attr in sorted(decisions):
        verdict = decisions[attr]
        if verdict == "approve":
            for action in sorted(usage.get(attr, ())):
                allowed = b.inputs_for(action)
                if allowed is None or attr in allowed:
                    continue
                path = source(action)
                if path is None:
                    notes.append(f"{attr}: {action} uses an inherited allowlist; not edited")
                    continue
                if attr not in current(path):
                    current(path).append(attr)
        elif verdict == "disallow":
            for action in sorted(wf_actions | {"*"}):
                allowed = b.default_inputs if action == "*" else b.inputs_for(action)
                if allowed is None:
                    if action != "*" and attr in seen and attr in usage and action in usage[attr]:
                        keep = [a for a in seen if decisions.get(a) != "disallow"]
                        lists[("default_inputs",)] = keep
                        undecided = [a for a in keep if a not in decisions]
                        notes.append(f"{attr}: {action} had no allowlist; proposing default_inputs of the "
                                     "attributes seen and not disallowed"
                                     + (f" ({len(undecided)} of them not decided in this review: "
                                        f"{', '.join(map(repr, undecided[:10]))})" if undecided else ""))
                    continue
                if attr not in allowed:
                    continue
                path = ("default_inputs",) if action == "*" else source(action)
                if path is None:
                    notes.append(f"{attr}: {action} uses an inherited allowlist; not edited")
                    continue
                if attr in current(path):
                    current(path).remove(attr)
        else:
            raise ReviewError(f"unknown attribute decision {verdict!r}")
    edited = PolicyText(text)
    for path, values in sorted(lists.items()):
        edited.set_list(workflow, path, values)
    if edited.text() == PolicyText(text).text():
        return text, "", [*notes, "no change needed: the policy already does what the decisions ask"]
    version = f"{base.version}+{review_id.lower()}"
    edited.set_version(version)
    new_text = edited.text()
    _only_lists_changed(doc, new_text, workflow, lists, version)
    diff = "".join(difflib.unified_diff(text.splitlines(keepends=True), new_text.splitlines(keepends=True),
                                        fromfile="a/policy.yaml", tofile="b/policy.yaml"))
    return new_text, diff, notes


def _only_lists_changed(doc: dict[str, Any], new_text: str, workflow: str,
                        lists: dict[tuple[str, ...], list[str]], version: str) -> None:
    """Refuse a proposal whose parsed YAML differs from the current policy (``doc``) anywhere but in the
    input lists it sets and the version: whatever the names hold, the proposal can change nothing else
    (no other key, workflow or default). A text edit that lands elsewhere (a layout this module does not
    understand, a duplicate key) is refused the same way."""
    expected = copy.deepcopy(doc)
    expected["version"] = version
    wf = expected["workflows"].get(workflow)
    if not isinstance(wf, dict):
        wf = expected["workflows"][workflow] = {}
    for path, values in lists.items():
        node = wf
        for key in path[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[path[-1]] = list(values)
    try:
        got = yaml.safe_load(new_text)
    except yaml.YAMLError as exc:
        got = f"unparseable: {exc}"
    if got != expected:
        where = _differences(expected, got)
        log.warning("policy proposal refused: it changes more than the input lists",
                    extra={"kv": {"workflow": workflow, "differs_at": ", ".join(where)}})
        raise ReviewError(f"refusing to propose: the edited policy would change more than the input lists of "
                          f"workflow {workflow!r} (it differs at {', '.join(where[:5])}); edit the policy by "
                          "hand and check the attribute names")


def _differences(a: Any, b: Any, at: str = "") -> list[str]:
    """Dotted paths where two parsed documents differ (the deepest mapping keys)."""
    if a == b:
        return []
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return [at or "<document>"]
    out: list[str] = []
    for key in sorted(set(a) | set(b), key=str):
        out += _differences(a.get(key), b.get(key), f"{at}.{key}" if at else str(key))
    return out


def check_text(text: str) -> str:
    """Validate policy text with the same code as ``agentgov policy check`` (on a temporary file)."""
    from ..scoring.policy import check_policy

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "policy.yaml"
        path.write_text(text)
        return check_policy(path)


def satisfies(text: str, workflow: str, decisions: dict[str, str], usage: dict[str, set[str]]) -> list[str]:
    """What the policy ``text`` does not do of the decisions (empty: it includes them all). An approved
    attribute must be permitted for the actions that used it; a disallowed one for no action seen."""
    from ..scoring.policy import parse_policy

    b = parse_policy(text, "<policy>").policy.boundary_for(workflow)
    every = sorted({a for acts in usage.values() for a in acts} | set(b.input_allowlist))
    missing = []
    for attr, verdict in sorted(decisions.items()):
        for action in (every if verdict == "disallow" else sorted(usage.get(attr, ()))):
            allowed = b.inputs_for(action)
            if verdict == "disallow" and (allowed is None or attr in allowed):
                missing.append(f"{attr} still permitted for {action}")
            if verdict == "approve" and allowed is not None and attr not in allowed:
                missing.append(f"{attr} not permitted for {action}")
    return missing
