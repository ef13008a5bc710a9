"""Real Prometheus and Alertmanager (Debian's packages) for end-to-end alerting tests, plus a webhook
receiver owned by the test."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from pipeline.broker import free_port


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(url)


class Webhook:
    """Collects Alertmanager webhook notifications (JSON bodies) per path."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any], float]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.received.append((self.path, json.loads(body), time.time()))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def on(self, path: str) -> list[dict[str, Any]]:
        return [body for p, body, _ in self.received if p == path]

    def __enter__(self) -> Webhook:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()


class _Process:
    binary = ""
    proc: subprocess.Popen[bytes] | None = None

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def args(self) -> list[str]:
        raise NotImplementedError

    def __enter__(self) -> Any:
        exe = shutil.which(self.binary)
        if exe is None:
            raise RuntimeError(f"{self.binary} not installed (ci/system-deps.sh installs it)")
        log = open(self.workdir / f"{self.binary}.log", "wb")
        self.proc = subprocess.Popen([exe, *self.args()], stdout=log, stderr=subprocess.STDOUT)
        _wait_ready(self.url + "/-/ready", self.proc)
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


class Alertmanager(_Process):
    """Alertmanager with the project's routing, receivers pointed at ``webhook`` and timers shortened."""

    binary = "prometheus-alertmanager"

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        super().__init__(workdir)
        self.config_path = workdir / "alertmanager.yml"
        self.config_path.write_text(yaml.safe_dump(config))

    def args(self) -> list[str]:
        return [f"--config.file={self.config_path}", f"--storage.path={self.workdir / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address="]


class Prometheus(_Process):
    """Prometheus scraping ``jobs`` (name -> targets) every second, evaluating ``rule_files`` every second."""

    binary = "prometheus"

    def __init__(self, workdir: Path, jobs: dict[str, list[str]], rule_files: list[Path], alertmanager: str) -> None:
        super().__init__(workdir)
        self.config_path = workdir / "prometheus.yml"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p.resolve()) for p in rule_files],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager.split("//")[1]]}]}]},
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}
                               for job, targets in jobs.items()],
        }
        self.config_path.write_text(yaml.safe_dump(config))

    def args(self) -> list[str]:
        return [f"--config.file={self.config_path}", f"--storage.tsdb.path={self.workdir / 'prom-data'}",
                f"--web.listen-address=127.0.0.1:{self.port}"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        doc = _get_json(f"{self.url}/api/v1/query?query={urllib.parse.quote(expr)}")
        return list(doc["data"]["result"])

    def alerts(self) -> list[dict[str, Any]]:
        return list(_get_json(f"{self.url}/api/v1/alerts")["data"]["alerts"])
