"""The pinned Apache Kafka broker jars, resolved once from Maven Central into a local cache.

``pom.xml`` beside this module pins the Kafka version and the Log4j2/SLF4J binding; Maven's
``dependency:copy-dependencies`` copies the runtime jars to ``<home>/jars-<version>``. A marker file holding the
POM's digest is written only after a successful copy, so an interrupted copy (or a changed POM) is redone instead of
starting a broker from half a classpath. A file lock keeps two processes (``make demo`` and ``make test``) from
resolving into the same directory at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

from agentwatch.broker.errors import BrokerError, with_tail

POM = Path(__file__).with_name("pom.xml")
MAVEN_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies"
MARKER = ".agentwatch-complete"
_NS = {"m": "http://maven.apache.org/POM/4.0.0"}

Progress = Callable[[str], None]


def kafka_version(pom: Path = POM) -> str:
    """The Kafka version the POM pins (``<properties><kafka.version>``)."""
    node = ET.parse(pom).getroot().find("m:properties/m:kafka.version", _NS)
    if node is None or not (node.text or "").strip():
        raise BrokerError(f"{pom} does not pin <kafka.version>")
    return node.text.strip()


def pom_digest(pom: Path = POM) -> str:
    return hashlib.sha256(pom.read_bytes()).hexdigest()[:16]


def jars_dir(home: Path, pom: Path = POM) -> Path:
    return home / f"jars-{kafka_version(pom)}"


def is_complete(directory: Path, pom: Path = POM) -> bool:
    """True when ``directory`` holds a finished copy made from this exact POM."""
    marker = directory / MARKER
    try:
        done = marker.read_text().strip() == pom_digest(pom)
    except OSError:
        return False
    return done and (directory / f"kafka_2.13-{kafka_version(pom)}.jar").is_file()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def resolve_jars(home: Path, pom: Path = POM, progress: Progress | None = None,
                 timeout: float = 900.0) -> Path:
    """Return the directory of broker jars, running Maven only when the cache is missing or incomplete."""
    target = jars_dir(home, pom)
    if is_complete(target, pom):
        return target
    version = kafka_version(pom)
    with _file_lock(home / f".jars-{version}.lock"):
        if is_complete(target, pom):  # another process finished it while we waited for the lock
            return target
        _run_maven(home, pom, target, version, progress or (lambda _msg: None), timeout)
    return target


def _run_maven(home: Path, pom: Path, target: Path, version: str, progress: Progress, timeout: float) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("Maven (`mvn`) is needed once to fetch the Kafka broker jars; install it "
                          "(Debian: apt-get install maven) or set KAFKA_BOOTSTRAP_SERVERS to an existing broker")
    if target.exists():
        shutil.rmtree(target)
    # Maven resolves relative to the POM's folder; work on a copy so an installed (read-only) package works too.
    work = home / "maven"
    work.mkdir(parents=True, exist_ok=True)
    work_pom = work / "pom.xml"
    shutil.copyfile(pom, work_pom)
    log = home / f"mvn-{version}.log"
    cmd = [mvn, "-B", "-q", "-Dstyle.color=never", "-f", str(work_pom), MAVEN_PLUGIN,
           f"-DoutputDirectory={target}", "-DincludeScope=runtime"]
    progress(f"resolving Apache Kafka {version} broker jars with Maven into {target} (first run only)")
    start = time.monotonic()
    next_note = start + 15
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=work)
        try:
            while proc.poll() is None:
                now = time.monotonic()
                if now - start > timeout:
                    raise BrokerError(with_tail(f"Maven did not finish within {timeout:.0f}s", log))
                if now >= next_note:
                    progress(f"  still resolving ({now - start:.0f}s)")
                    next_note = now + 15
                time.sleep(0.2)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if proc.returncode != 0:
        raise BrokerError(with_tail(f"Maven failed (exit {proc.returncode}) resolving Kafka {version}: "
                                    f"{' '.join(cmd)}", log))
    if not (target / f"kafka_2.13-{version}.jar").is_file():
        raise BrokerError(with_tail(f"Maven succeeded but {target} has no kafka_2.13-{version}.jar", log))
    (target / MARKER).write_text(pom_digest(pom) + "\n")
    progress(f"  resolved {sum(1 for _ in target.glob('*.jar'))} jars in {time.monotonic() - start:.1f}s")
