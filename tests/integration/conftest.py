"""Session-scoped real components: a Tansu broker, and per-test topics, groups and chdb stores.

Real Apache Kafka (KRaft, from the Maven jars of ``ci/kafka/pom.xml``) is opt-in by marker: tests marked
``@pytest.mark.kafka`` may use ``kafka_cluster`` (3 brokers, RF 3, ``min.insync.replicas=2``); a test that
needs a node of its own (SASL and ACLs, a broker restart) starts it. Tests that take the ``bus`` fixture run
once per engine (Tansu and Kafka);
``settings_factory`` then points at that engine. Without a JDK the Kafka tier is deselected with one
line saying so (tests/conftest.py); under ``CI=true`` that is an error instead.

Fixture pairs follow quix-streams: ``settings_factory`` + ``settings``, ``publisher_factory`` + ``publisher``,
``pipeline_factory`` + ``pipeline``. Every test gets its own topics, consumer groups and ClickHouse
database, so tests can run in parallel against one broker. chdb serves ONE data path per process:
in-process stores must use ``chdb_path`` (the factory's default) and a database of their own; a
subprocess that owns a store (e.g. ``python -m consumers.writer``) may use any path.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from pipeline.broker import EmbeddedBroker, free_port
from pipeline.kraft import KraftCluster
from pipeline.metrics import Metrics
from pipeline.publisher import TransitionPublisher
from pipeline.runner import Pipeline
from pipeline.settings import Settings
from pipeline.topics import ensure_topics
from tests.support.helpers import Bus, InProcess


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with EmbeddedBroker(free_port(), log) as b:
        yield b


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KraftCluster]:
    """Three KRaft nodes (each broker + controller voter): replication factor 3, min.insync.replicas=2,
    transaction.state.log.replication.factor=3. Tests may kill and restart nodes; each test leaves them up."""
    with KraftCluster(tmp_path_factory.mktemp("kafka3"), nodes=3) as cluster:
        yield cluster


@pytest.fixture(params=["tansu", pytest.param("kafka", marks=pytest.mark.kafka)])
def bus(request: pytest.FixtureRequest) -> Bus:
    """Run the requesting test on Tansu and on the 3-broker Kafka cluster."""
    if request.param == "kafka":
        cluster: KraftCluster = request.getfixturevalue("kafka_cluster")
        return Bus("kafka", cluster.bootstrap, 3, cluster)
    tansu: EmbeddedBroker = request.getfixturevalue("broker")
    return Bus("tansu", tansu.bootstrap, 1)


@pytest.fixture
def settings_factory(request: pytest.FixtureRequest, chdb_path: Path, tmp_path: Path) -> Callable[..., Settings]:
    # The engine of a test that takes ``bus``; otherwise the session's Tansu ``broker``.
    on: Bus | EmbeddedBroker = request.getfixturevalue("bus" if "bus" in request.fixturenames else "broker")
    replication = on.replication if isinstance(on, Bus) else 1

    def make(**overrides: Any) -> Settings:
        tag = uuid.uuid4().hex[:10]
        base: dict[str, Any] = {
            "kafka_bootstrap": on.bootstrap,
            "topic_replication": replication,
            "topic_transitions": f"t{tag}.agentgov.transitions.v1",
            "topic_assessments": f"t{tag}.agentgov.assessments.v1",
            "topic_dlq": f"t{tag}.agentgov.transitions.dlq",
            "topic_baselines": f"t{tag}.agentgov.baselines.v1",
            "topic_decisions": f"t{tag}.agentgov.decisions.v1",
            "topic_exceptions": f"t{tag}.agentgov.exceptions.v1",
            "topic_remediations": f"t{tag}.agentgov.remediations.v1",
            "topic_facts_by_target": f"t{tag}.agentgov.facts.by-target.v1",
            "topic_facts_by_agent": f"t{tag}.agentgov.facts.by-agent.v1",
            "topic_holdings": f"t{tag}.agentgov.holdings.v1",
            "topic_delegations": f"t{tag}.agentgov.delegations.v1",
            "topic_correlations": f"t{tag}.agentgov.correlations.v1",
            "correlator_group": f"correlator-{tag}",
            "scorer_group": f"scorer-{tag}",
            "writer_group": f"writer-{tag}",
            "clickhouse_dsn": f"chdb://{chdb_path}",
            "clickhouse_database": f"t{tag}",
            "metrics_port": 0,
            "state_dir": tmp_path / f"state-{tag}",
            "batch_max_seconds": 0.1,
            "writer_batch_seconds": 0.2,
        }
        base.update(overrides)
        settings = Settings.load(**base)
        ensure_topics(settings)
        return settings

    return make


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory()


@pytest.fixture
def publisher_factory() -> Iterator[Callable[..., TransitionPublisher]]:
    made: list[TransitionPublisher] = []

    def make(settings: Settings, **kwargs: Any) -> TransitionPublisher:
        pub = TransitionPublisher(settings, **kwargs)
        made.append(pub)
        return pub

    yield make
    for pub in made:
        pub.producer.flush(5)


@pytest.fixture
def publisher(publisher_factory: Callable[..., TransitionPublisher], settings: Settings) -> TransitionPublisher:
    return publisher_factory(settings)


@pytest.fixture
def pipeline_factory(tmp_path: Path) -> Iterator[Callable[..., Pipeline]]:
    made: list[Pipeline] = []

    def make(settings: Settings, scorers: int = 1, **kwargs: Any) -> Pipeline:
        kwargs.setdefault("metrics", Metrics(CollectorRegistry()))
        kwargs.setdefault("correlators", 0)  # tests of the correlation stage ask for them
        kwargs.setdefault("log_dir", settings.state_dir)
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        pipe = Pipeline(settings, scorers=scorers, **kwargs).start()
        made.append(pipe)
        return pipe

    yield make
    for pipe in made:
        pipe.stop()


@pytest.fixture
def in_process() -> Iterator[Callable[..., InProcess]]:
    """``in_process(settings, registry=None)``: scorer and writer threads in this process, closed after the test."""
    made: list[InProcess] = []

    def make(settings: Settings, registry: Any = None) -> InProcess:
        made.append(InProcess(settings, registry))
        return made[-1]

    yield make
    for p in made:
        p.close()


CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator[Any]:
    """A page of a headless Debian Chromium driven by Playwright (no browser download)."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian chromium is missing: ci/system-deps.sh installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=ARGS,
            viewport={"width": 1500, "height": 900})
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()
