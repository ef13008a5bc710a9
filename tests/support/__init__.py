"""Test support: code that only tests use, kept out of the installed ``pipeline`` package.

- :mod:`tests.support.helpers`: reading topics, committed offsets, scraping ``/metrics``, waiting, the
  in-process scorer + writer pair;
- :mod:`tests.support.chaos`: restartable consumer slots for ``kill -9`` drills, store reads from outside;
- :mod:`tests.support.faults`: fault injection at the ClickHouse client boundary.

Events for tests come from :mod:`pipeline.drafts` (the same builder the demo workload uses); scoring
contexts from :mod:`tests.unit.scoring_factory`.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The repository's root (compose files, policies, docs)."""
