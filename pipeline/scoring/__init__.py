"""Scoring: pure functions from (event, context) to findings.

- ``findings``: the Finding type, severities, and the risk-score rule.
- ``catalogue``: every rule's stable code, severity, meaning, evidence fields and framework refs.
- ``context``: the read-only context a rule sees (policy, run history, baselines, entitlements).
- ``rules``: per-event risk rules.
- ``engine``: runs the rules and builds the assessment.
"""
