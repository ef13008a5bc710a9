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

Example::

    new_text, diff, notes = propose(text, "jml-provisioning", {"location": "disallow"}, usage, "ARV-1")
"""

from __future__ import annotations

import difflib
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .model import ReviewError

WIDTH = 110


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


def _flow(key: str, indent: int, values: list[str]) -> list[str]:
    head = " " * indent + f"{key}: ["
    out, line = [], head
    for n, v in enumerate(values):
        piece = v + (", " if n < len(values) - 1 else "]")
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
                self.lines[i] = f'version: "{version}"\n'
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
                        notes.append(f"{attr}: {action} had no allowlist; proposing default_inputs of the "
                                     "attributes seen and not disallowed")
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
    edited.set_version(f"{base.version}+{review_id.lower()}")
    new_text = edited.text()
    diff = "".join(difflib.unified_diff(text.splitlines(keepends=True), new_text.splitlines(keepends=True),
                                        fromfile="a/policy.yaml", tofile="b/policy.yaml"))
    return new_text, diff, notes


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
