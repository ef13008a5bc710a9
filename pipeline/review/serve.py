"""``agentgov review``: serve the workbench, with the embedded pipeline when the store is embedded.

chdb serves one data path per process, so with ``chdb://`` the app cannot read a store that another
``agentgov run`` process owns: it runs the pipeline (broker, scorers, writer) in its own process instead.
With a ClickHouse server (compose, production) it only reads the store and publishes to Kafka.
"""

from __future__ import annotations

import logging

import uvicorn

from ..metrics import Metrics, serve
from ..runner import Pipeline
from ..settings import Settings
from ..sinks.clickhouse import ClickHouseSink
from .app import create_app

log = logging.getLogger(__name__)


def serve_review(settings: Settings, *, scorers: int = 1) -> None:
    pipe: Pipeline | None = None
    if settings.clickhouse_dsn.startswith("chdb://"):
        metrics = Metrics()
        serve(metrics, settings.metrics_port, settings.metrics_addr)
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        pipe = Pipeline(settings, scorers=scorers, metrics=metrics, log_dir=settings.state_dir).start()
        settings = pipe.settings
        log.info("embedded pipeline started for the review app", extra={"kv": {"kafka": settings.bootstrap()}})
    app = create_app(settings, ClickHouseSink.connect(settings))
    log.info("review app listening", extra={"kv": {"addr": settings.review_addr, "port": settings.review_port,
                                                   "auth": settings.review_auth}})
    try:
        uvicorn.run(app, host=settings.review_addr, port=settings.review_port, log_level="warning",
                    proxy_headers=False)  # the peer address must stay the proxy's: it decides header trust
    finally:
        app.state.ctx.service.close()
        if pipe is not None:
            pipe.stop()
