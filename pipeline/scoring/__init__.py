"""Scoring: pure functions from (event, context) to findings.

- ``findings``: the Finding type, severities, and the risk-score rule.
- ``catalogue``: every finding code's severity, meaning, evidence fields and framework refs; ``render_catalogue``.
- ``policy``: the governance policy file (per-workflow boundaries, lifecycle, SoD, escalation, drift).
- ``context``: the read-only context a rule sees (policy, histories, baselines, entitlements).
- ``rules``: authority and approval (AG-AUTH-*), and the predicates the other rule modules share.
- ``boundary``: workflow boundary and policy version (AG-BND-*, AG-POL-001).
- ``lifecycle``: joiner/mover/leaver and request triggers (AG-LCM-*).
- ``evidence``: completeness, hash, chain, duplicates, signatures (AG-EVD-*).
- ``sod``: separation-of-duties toxic pairs (AG-SOD-001).
- ``drift``: behaviour against the agent's own baseline (AG-DRF-*).
- ``escalation``: hidden multi-step escalation patterns (AG-ESC-*).
- ``engine``: composes ``RULES`` and builds the assessment.
"""
