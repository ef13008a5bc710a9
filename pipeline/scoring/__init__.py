"""Scoring: pure functions from (event, context) to findings.

- ``findings``: the Finding type, severities, and the risk-score rule.
- ``catalogue``: the registry: ``spec`` declares a finding code, ``@rule`` registers the function beside it;
  ``CATALOGUE``, ``RULES`` and ``render_catalogue`` read it. Adding a rule: docs/rules.md.
- ``policy``: the governance policy file (per-workflow boundaries, lifecycle, SoD, escalation, drift).
- ``context``: the read-only context a rule sees (policy, histories, baselines, entitlements).
- ``rules``: authority and approval (AG-AUTH-*), and the predicates the other rule modules share.
- ``boundary``: workflow boundary and policy version (AG-BND-*, AG-POL-001).
- ``lifecycle``: joiner/mover/leaver and request triggers (AG-LCM-*).
- ``evidence``: completeness, hash, chain, duplicates, signatures (AG-EVD-*).
- ``sod``: separation-of-duties toxic pairs (AG-SOD-001).
- ``drift``: behaviour against the agent's own baseline (AG-DRF-*).
- ``escalation``: hidden multi-step escalation patterns (AG-ESC-*).
- ``engine``: runs ``RULES`` and builds the assessment.
- ``crossrun``: chains across runs and partitions (AG-XRN-*), run by the correlator.

Importing the package imports every rule module, in this order (the order of findings in an assessment),
so the catalogue and the registry are complete whichever module a caller imports first.
"""

from . import rules, boundary, lifecycle, evidence, sod, drift, escalation, crossrun  # noqa: F401, I001  (registers)
