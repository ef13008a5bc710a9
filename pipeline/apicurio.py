"""Apicurio Registry, the Confluent-compatible schema registry (``/apis/ccompat/v7``), built from Maven Central.

``ci/registry/pom.xml`` names the app artifact; its runnable form is built once with the Quarkus Maven plugin
into an ignored cache (``.cache/registry/<hash of pom + overlay>``) and reused. It is the SQL variant that
compose runs (image ``apicurio/apicurio-registry-sql``): schemas live in PostgreSQL, so they survive a
restart of the registry. :class:`RegistryDatabase` runs that PostgreSQL (Debian's ``postgresql`` package)
on a loopback port. Tests take the registry away with :meth:`ApicurioRegistry.pause` (the process stops
answering, as behind a dead network). Needs Java 17+, Maven and PostgreSQL.

Example::

    with RegistryDatabase(tmp_path / "db") as db, ApicurioRegistry(tmp_path / "registry", db.env()) as registry:
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
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from pydantic import SecretStr

from .broker import free_port
from .errors import BrokerError
from .kraft import HOW_TO_ENABLE, _die_with_parent, java_missing
from .process import ChildProcess

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
POM = REPO / "ci" / "registry" / "pom.xml"
CACHE = REPO / ".cache" / "registry"
CCOMPAT = "/apis/ccompat/v7"
PG_HOW_TO_ENABLE = "install PostgreSQL (Debian: apt-get install postgresql)"


def registry_app(pom: Path = POM, cache: Path = CACHE) -> Path:
    """The runnable registry jar, built with Maven on first use (idempotent: keyed by the pom and the
    properties overlay beside it)."""
    if not pom.exists():
        raise BrokerError(f"{pom} not found: the registry runs from a source checkout", pom=str(pom))
    overlay = pom.with_name("overlay.properties")
    digest = hashlib.sha256(pom.read_bytes() + (overlay.read_bytes() if overlay.exists() else b"")).hexdigest()[:16]
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
        shutil.rmtree(out, ignore_errors=True)
        raise BrokerError(f"maven could not build the registry: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    shutil.rmtree(app, ignore_errors=True)
    app.mkdir(parents=True)
    (out / "lib").rename(app / "lib")  # the runner's manifest class path names lib/...
    next(out.glob("*-runner.jar")).rename(runner)
    shutil.rmtree(out, ignore_errors=True)
    (app / ".built").write_text(digest + "\n")
    return runner


def postgres_bin() -> Path:
    """The folder of PostgreSQL's server programs (``initdb``, ``postgres``): Debian keeps them off PATH."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if not versions:
        raise BrokerError(f"cannot run the registry's database: no PostgreSQL; {PG_HOW_TO_ENABLE}")
    return versions[-1].parent


def postgres_major() -> int:
    """The major version of the PostgreSQL :class:`RegistryDatabase` runs (compose pins the same)."""
    out = subprocess.run([str(postgres_bin() / "postgres"), "--version"], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1].split(".")[0])


class RegistryDatabase:
    """A PostgreSQL server for the registry's SQL storage on a loopback port, password-authenticated
    (scram-sha-256) like compose's ``registry-db``. Run as the ``postgres`` user when we are root (PostgreSQL
    refuses root), in a private folder under the system temp dir that this user can reach. Its data
    outlives :meth:`stop`: :meth:`start` again serves the same database, until :meth:`remove`."""

    def __init__(self, root: Path, database: str = "registry", user: str = "registry", password: str = "registry",
                 port: int | None = None) -> None:
        self.root = root.resolve()
        self.database, self.user, self.password = database, user, SecretStr(password)
        self.port = port or free_port()
        self.home = Path(tempfile.mkdtemp(prefix="agentgov-registry-db-"))
        self.data = self.home / "data"
        self.as_user: str | None = "postgres" if os.geteuid() == 0 else None
        if self.as_user:
            shutil.chown(self.home, self.as_user)
        self.proc: ChildProcess | None = None

    def env(self) -> dict[str, str]:
        """What the registry reads (the apicurio-registry-sql image's variables)."""
        return {"REGISTRY_DATASOURCE_URL": f"jdbc:postgresql://127.0.0.1:{self.port}/{self.database}",
                "REGISTRY_DATASOURCE_USERNAME": self.user,
                "REGISTRY_DATASOURCE_PASSWORD": self.password.get_secret_value()}

    def _run(self, *args: str) -> None:
        done = subprocess.run(list(args), capture_output=True, text=True, user=self.as_user, cwd=self.home)
        if done.returncode != 0:
            raise BrokerError(f"{Path(args[0]).name} failed: {done.stdout[-1000:]}{done.stderr[-1000:]}")

    def start(self, timeout: float = 60.0) -> RegistryDatabase:
        bin_dir = postgres_bin()
        fresh = not self.data.exists()
        if fresh:
            pwfile = self.home / "pw"
            pwfile.write_text(self.password.get_secret_value() + "\n")
            if self.as_user:
                shutil.chown(pwfile, self.as_user)
            try:  # local socket: trust (to create the database); TCP: the password
                self._run(str(bin_dir / "initdb"), "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}",
                          "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync")
            finally:
                pwfile.unlink()
        self.root.mkdir(parents=True, exist_ok=True)
        self.proc = ChildProcess([bin_dir / "postgres", "-D", self.data, "-p", str(self.port), "-k", self.home,
                                  "-c", "listen_addresses=127.0.0.1"], log_path=self.root / "postgres.log",
                                 user=self.as_user, preexec_fn=_die_with_parent).start()
        deadline = time.monotonic() + timeout
        while not self._accepts(bin_dir):  # listening is not enough: it refuses sessions while starting up
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.proc.tail(20)
                self.stop()
                raise BrokerError(f"the registry's PostgreSQL did not start: {tail}")
            time.sleep(0.1)
        if fresh:
            self._run(str(bin_dir / "createdb"), "-h", str(self.home), "-p", str(self.port), "-U", self.user,
                      self.database)
        return self

    def _accepts(self, bin_dir: Path) -> bool:
        """pg_isready: exit 0 only once the server accepts sessions (1 while it starts up, 2 no answer)."""
        probe = subprocess.run([str(bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port),
                                "-d", self.database, "-t", "1"], capture_output=True)
        return probe.returncode == 0

    def stop(self, timeout: float = 30.0) -> None:
        """A clean shutdown (SIGTERM: PostgreSQL's "smart" mode would wait for the registry's pool, so
        SIGINT, "fast": committed work is on disk)."""
        if self.proc is not None:
            self.proc.stop(timeout, sig=signal.SIGINT)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> RegistryDatabase:
        try:
            return self.start()
        except BaseException:
            self.remove()
            raise

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.remove()


class ApicurioRegistry:
    """One Apicurio Registry process on a loopback port; ``env`` names its storage (:meth:`RegistryDatabase.env`,
    or compose's ``REGISTRY_DATASOURCE_*``)."""

    def __init__(self, root: Path, env: Mapping[str, str], port: int | None = None,
                 start_timeout: float = 120.0) -> None:
        self.root = root.resolve()
        self.env = dict(env)
        self.port = port or free_port()
        self.start_timeout = start_timeout
        self.proc: ChildProcess | None = None

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
        cmd = ["java", "-Xmx384m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
               f"-Dquarkus.http.port={self.port}", "-Dquarkus.http.host=127.0.0.1",
               "-Dquarkus.log.level=WARN", "-Dquarkus.log.category.\"io.quarkus\".level=INFO",
               "-jar", str(runner)]
        self.proc = ChildProcess(cmd, env={**os.environ, **self.env}, log_path=self.root / "registry.log",
                                 preexec_fn=_die_with_parent).start()
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
                tail = self.proc.tail(20)
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

    def request_raw(self, method: str, path: str, timeout: float = 10) -> int:
        """The HTTP status of one call to a path of the server (not under the ccompat root), e.g. ``/health/ready``."""
        req = urllib.request.Request(self.base + path, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    def set_compatibility(self, subject: str, level: str) -> None:
        self.request("PUT", f"/config/{subject}", {"compatibility": level})

    def pause(self) -> None:
        """SIGSTOP: the port stays open but nothing answers (a hung or partitioned registry)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed or closed."""
        assert self.proc is not None
        self.proc.kill()

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None:
            return
        if self.proc.alive():
            self.proc.send_signal(signal.SIGCONT)  # a paused JVM cannot act on SIGTERM
        self.proc.stop(timeout)

    def __enter__(self) -> ApicurioRegistry:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
