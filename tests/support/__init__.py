"""Test support: code that only tests use, kept out of the installed ``pipeline`` package.

- :mod:`tests.support.helpers`: reading topics, committed offsets, scraping ``/metrics``, waiting, the
  in-process scorer + writer pair;
- :mod:`tests.support.chaos`: restartable consumer slots for ``kill -9`` drills, store reads from outside;
- :mod:`tests.support.faults`: fault injection at the ClickHouse client boundary;
- :mod:`tests.support.promql`: metric names of PromQL expressions and of the catalogue, promtool checks;
- :mod:`tests.support.compose`: the compose files and their ``docker-compose config`` renderings.

Events for tests come from :mod:`pipeline.drafts` (the same builder the demo workload uses); decoded
events, Avro records and scoring contexts from :mod:`tests.unit.scoring_factory`, rule tables from
:mod:`tests.unit.scoring_cases`. Fixtures live in the conftest files; tests never import from a test module.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The repository's root (compose files, policies, docs)."""
