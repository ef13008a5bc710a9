"""Apicurio Registry, the Confluent-compatible schema registry (``/apis/ccompat/v7``), built from Maven Central.

``ci/registry/pom.xml`` names the app artifact; its runnable form is built once with the Quarkus Maven plugin
into an ignored cache (``.cache/registry/<pom hash>``) and reused. The registry keeps its schemas in memory
(H2): a restart forgets them, so tests take it away with :meth:`ApicurioRegistry.pause` (the process stops
answering, as behind a dead network) rather than by restarting it. Needs Java 17+ and Maven.

Example::

    with ApicurioRegistry(tmp_path / "registry") as registry:
        Settings(schema_registry_url=registry.url, ...)
        registry.pause()                       # requests now time out ...
        registry.resume()                      # ... and are answered again
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from .broker import free_port
from .errors import BrokerError
from .kraft import HOW_TO_ENABLE, _die_with_parent, java_missing

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
POM = REPO / "ci" / "registry" / "pom.xml"
CACHE = REPO / ".cache" / "registry"
CCOMPAT = "/apis/ccompat/v7"


def registry_app(pom: Path = POM, cache: Path = CACHE) -> Path:
    """The runnable registry jar, built with Maven on first use (idempotent: keyed by the pom)."""
    if not pom.exists():
        raise BrokerError(f"{pom} not found: the registry runs from a source checkout", pom=str(pom))
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()[:16]
    app = cache / digest
    runner = app / "registry-runner.jar"
    if (app / ".built").exists():
        return runner
    missing = java_missing()
    if missing:
        raise BrokerError(f"cannot run the schema registry: {missing}; {HOW_TO_ENABLE}")
    out = cache / f"build.tmp-{os.getpid()}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = ["mvn", "-q", "-B", "-f", str(pom), "package", "-DskipTests", f"-Dagentgov.out={out}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise BrokerError(f"maven could not build the registry: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    shutil.rmtree(app, ignore_errors=True)
    app.mkdir(parents=True)
    (out / "lib").rename(app / "lib")  # the runner's manifest class path names lib/...
    next(out.glob("*-runner.jar")).rename(runner)
    shutil.rmtree(out, ignore_errors=True)
    (app / ".built").write_text(digest + "\n")
    return runner


class ApicurioRegistry:
    """One Apicurio Registry process on a loopback port, in-memory storage."""

    def __init__(self, root: Path, port: int | None = None, start_timeout: float = 120.0) -> None:
        self.root = root.resolve()
        self.port = port or free_port()
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """What ``AGENTGOV_SCHEMA_REGISTRY_URL`` takes: the Confluent-compatible API root."""
        return self.base + CCOMPAT

    def start(self) -> ApicurioRegistry:
        runner = registry_app()
        self.root.mkdir(parents=True, exist_ok=True)
        out = open(self.root / "registry.log", "ab")  # noqa: SIM115
        cmd = ["java", "-Xmx384m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
               f"-Dquarkus.http.port={self.port}", "-Dquarkus.http.host=127.0.0.1",
               "-Dquarkus.log.level=WARN", "-Dquarkus.log.category.\"io.quarkus\".level=INFO",
               "-jar", str(runner)]
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        out.close()
        try:
            self.wait_ready(self.start_timeout)
        except BrokerError:
            self.stop()
            raise
        log.info("schema registry up", extra={"kv": {"url": self.url}})
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                tail = (self.root / "registry.log").read_text(errors="replace")[-1500:]
                raise BrokerError(f"schema registry exited with {self.proc.returncode}: {tail}")
            try:
                self.request("GET", "/subjects", timeout=2)
                return
            except (OSError, urllib.error.URLError) as exc:
                last = str(exc)
            time.sleep(0.3)
        raise BrokerError(f"schema registry at {self.url} not ready after {timeout}s: {last}")

    def request(self, method: str, path: str, body: object = None, timeout: float = 10) -> object:
        """One call to the ccompat API; raises ``urllib.error.HTTPError`` on a refusal (e.g. 409)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/vnd.schemaregistry.v1+json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")

    def set_compatibility(self, subject: str, level: str) -> None:
        self.request("PUT", f"/config/{subject}", {"compatibility": level})

    def pause(self) -> None:
        """SIGSTOP: the port stays open but nothing answers (a hung or partitioned registry)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)  # a paused JVM cannot act on SIGTERM
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> ApicurioRegistry:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
