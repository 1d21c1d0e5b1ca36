"""A real single-node Apache Kafka (KRaft) run as a child JVM: resolve jars, format, start, wait, stop.

This is the broker the tests, the demo and ``agentwatch broker start`` use when no ``KAFKA_BOOTSTRAP_SERVERS`` is
given: the same Apache Kafka the ``apache/kafka`` image runs, assembled from Maven Central (see ``jars.py``).

No orphan JVMs: the broker runs in its own process group and is stopped (SIGTERM, then SIGKILL after a timeout) on
``stop()``, on leaving the ``with`` block and at interpreter exit; and on Linux the kernel kills it when the Python
parent dies abruptly (``PR_SET_PDEATHSIG``), which covers SIGKILL, ``os._exit`` and crashes. The death signal is tied
to the *thread* that started the broker, so start it from a thread that lives as long as the broker should (the
main thread, a pytest session fixture). ``detach=True`` (for ``agentwatch broker start``) opts out of all three:
that broker is meant to outlive the command.

Two kinds of data directory:
- ephemeral (no ``data_dir``): a fresh temporary directory, free ports, deleted on stop;
- persistent (``data_dir`` given): formatted once; cluster id and ports are remembered in ``launcher-state.json`` so
  a restart finds its data (the controller endpoint is part of the KRaft voter set and must not move).

Either way the data directory is made 0700 (an existing one is tightened on every start): the broker's log
segments hold the events as produced, and the JVM writes them with the umask's 0644, so the directory is what keeps
other local users out.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from agentwatch.broker import cds, jars, properties
from agentwatch.broker.errors import BrokerError, log_tail, with_tail

HOST = properties.HOST
LOG4J_CONFIG = Path(__file__).with_name("log4j2.properties")
SCRATCH_PREFIX = "agentwatch-kafka-"
STATE_FILE = "launcher-state.json"
LOG_FILE = "broker.log"
PROPS_FILE = "server.properties"
KRAFT_DIR = "kraft-logs"
_PR_SET_PDEATHSIG = 1
_PORT_CLASH = "Address already in use"

Progress = Callable[[str], None]


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago (the broker binds them right after)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_open(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def java_executable() -> str:
    """``$JAVA_HOME/bin/java`` or ``java`` on PATH; Kafka 4.x needs Java 17 or newer."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise BrokerError("no `java` found (Kafka 4.x needs Java 17+; Debian: apt-get install openjdk-17-jre-headless)"
                          " — or set KAFKA_BOOTSTRAP_SERVERS to an existing broker")
    return java


def pid_alive(pid: int) -> bool:
    """True for a live process (a zombie awaiting its reaper counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def is_kafka_process(pid: int, must_contain: str | None = None) -> bool:
    """True when ``pid`` is a running ``kafka.Kafka`` JVM (and its command line holds ``must_contain``).

    Guards ``broker stop`` against signalling an unrelated process that reused a stale pid.
    """
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    args = [a.decode("utf-8", "replace") for a in argv]
    return pid_alive(pid) and "kafka.Kafka" in args and (must_contain is None or any(must_contain in a for a in args))


def terminate(pid: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
    """Stop a broker's process group: SIGTERM, wait up to ``timeout``, then SIGKILL. True if it was running."""

    def gone() -> bool:
        return proc.poll() is not None if proc is not None else not pid_alive(pid)

    if gone():
        return False
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while not gone() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not gone():
        _signal_group(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not gone() and time.monotonic() < deadline:
            time.sleep(0.05)
    if proc is not None:
        proc.wait(timeout=10)
    return True


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the broker leads its own session, so its pgid is its pid
    except ProcessLookupError:
        pass
    except PermissionError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _die_with_parent(sig: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that asks the kernel to send ``sig`` to the child when this process dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before fork: the child only calls into it
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died between fork and prctl
            os._exit(1)

    return preexec


def sweep_stale_scratch() -> None:
    """Remove ephemeral data dirs whose owning Python process died without cleaning up (e.g. was SIGKILLed)."""
    for d in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"):
        owner = d.name[len(SCRATCH_PREFIX):].split("-", 1)[0]
        if owner.isdigit() and int(owner) != os.getpid() and not pid_alive(int(owner)):
            shutil.rmtree(d, ignore_errors=True)


class LocalKafka:
    """One local Apache Kafka broker; use as a context manager or call ``start()`` / ``stop()``."""

    def __init__(self, home: Path, *, port: int | None = None, data_dir: Path | None = None,
                 detach: bool = False, heap_max: str = "512m", startup_timeout: float = 120.0,
                 stop_timeout: float = 30.0, extra_config: dict[str, str] | None = None,
                 progress: Progress | None = None, pom: Path = jars.POM) -> None:
        self.home = Path(home)
        self.requested_port = port
        self.persistent = data_dir is not None
        self.data_dir: Path | None = Path(data_dir).resolve() if data_dir is not None else None
        self.detach = detach
        self.heap_max = heap_max
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.extra_config = dict(extra_config or {})
        self.progress: Progress = progress or (lambda _msg: None)
        self.pom = pom
        self.port: int | None = None
        self.controller_port: int | None = None
        self.cluster_id: str | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.last_pid: int | None = None
        self._cds_archive: Path | None = None
        self._cds_pending: Path | None = None

    # -- what callers read ------------------------------------------------------------------------------------
    @property
    def bootstrap_servers(self) -> str:
        if self.port is None:
            raise BrokerError("the broker has not been started")
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def log_path(self) -> Path:
        if self.data_dir is None:
            raise BrokerError("the broker has no data directory yet")
        return self.data_dir / LOG_FILE

    @property
    def kafka_version(self) -> str:
        return jars.kafka_version(self.pom)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- lifecycle --------------------------------------------------------------------------------------------
    def __enter__(self) -> LocalKafka:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> LocalKafka:
        """Resolve, format and start the broker, returning once it answers a metadata request."""
        if self.running():
            return self
        java = java_executable()
        jar_dir = jars.resolve_jars(self.home, self.pom, self.progress)
        # Ports we picked ourselves can be taken by someone else before the JVM binds them: pick again.
        attempts = 1 if (self.persistent or self.requested_port) else 3
        for attempt in range(1, attempts + 1):
            self._prepare_data_dir()
            try:
                self._format_if_needed(java, jar_dir)
                self._spawn(java, jar_dir)
                self.progress(f"starting Kafka {self.kafka_version} on {self.bootstrap_servers} "
                              f"(log {self.log_path})")
                self._wait_ready()
                return self
            except BaseException as exc:
                clash = isinstance(exc, BrokerError) and _PORT_CLASH in log_tail(self.log_path, 400)
                self._kill_quietly()
                if not self.persistent:
                    self._discard_data_dir()
                if clash and attempt < attempts:
                    continue
                raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop the JVM (SIGTERM, then SIGKILL after ``stop_timeout``); an ephemeral data dir is deleted."""
        proc = self.process
        if proc is not None:
            # Writing the class-data archive at exit takes seconds on a busy machine: do not SIGKILL it for that.
            terminate(proc.pid, self.stop_timeout + (60.0 if self._cds_pending else 0.0), proc)
            self.process = None
            self._settle_cds(clean_exit=proc.returncode in (0, 128 + signal.SIGTERM))
        _LIVE.discard(self)
        if not self.persistent:
            self._discard_data_dir()

    def release(self) -> int:
        """Forget a detached broker without stopping it (it outlives this process); returns its pid."""
        if self.process is None:
            raise BrokerError("no broker to release")
        pid = self.process.pid
        self.process = None  # once this process exits, init adopts and reaps the broker
        _LIVE.discard(self)
        return pid

    # -- steps ------------------------------------------------------------------------------------------------
    def _prepare_data_dir(self) -> None:
        if not self.persistent:
            sweep_stale_scratch()
            self.data_dir = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-"))
            if self.requested_port is not None:
                self.port, self.controller_port = self.requested_port, _free_port_except(self.requested_port)
            else:
                self.port, self.controller_port = free_ports(2)
            self.cluster_id = properties.new_cluster_id()
        else:
            assert self.data_dir is not None
            self.data_dir.mkdir(parents=True, exist_ok=True)
            os.chmod(self.data_dir, 0o700)  # the log segments inside are 0644: this keeps them private
            state = self._load_state()
            meta = self.data_dir / KRAFT_DIR / "meta.properties"
            formatted_id = properties.parse(meta.read_text()).get("cluster.id") if meta.is_file() else None
            self.cluster_id = formatted_id or properties.new_cluster_id()
            self.controller_port = _int_or_none(state.get("controller_port"))
            self.port = self.requested_port or _int_or_none(state.get("port"))
            if self.port is None:
                self.port = _free_port_except(self.controller_port)
            if self.controller_port is None:
                self.controller_port = _free_port_except(self.port)
            if self.port == self.controller_port:
                raise BrokerError(f"port {self.port} is this broker's controller port (see {self._state_path()}); "
                                  "choose another")
            self._state_path().write_text(json.dumps({
                "cluster_id": self.cluster_id, "controller_port": self.controller_port, "port": self.port,
                "kafka_version": self.kafka_version}, indent=2) + "\n")
        assert self.data_dir is not None
        props = properties.server_properties(self.port, self.controller_port, self.data_dir / KRAFT_DIR,
                                             self.extra_config)
        (self.data_dir / PROPS_FILE).write_text(properties.render(props))

    def _format_if_needed(self, java: str, jar_dir: Path) -> None:
        assert self.data_dir is not None and self.cluster_id is not None
        if (self.data_dir / KRAFT_DIR / "meta.properties").is_file():
            return
        log = self.data_dir / "format.log"
        cmd = [java, "-Xmx128m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC",
               f"-Dlog4j2.configurationFile={LOG4J_CONFIG}", "-cp", f"{jar_dir}/*", "kafka.tools.StorageTool",
               "format", "-t", self.cluster_id, "-c", str(self.data_dir / PROPS_FILE), "--standalone"]
        with log.open("wb") as out:
            try:
                rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    timeout=120, check=False).returncode
            except subprocess.TimeoutExpired as exc:
                raise BrokerError(with_tail("formatting the KRaft log dir took over 120s", log)) from exc
        if rc != 0:
            raise BrokerError(with_tail(f"kafka-storage format failed (exit {rc})", log))

    def _spawn(self, java: str, jar_dir: Path) -> None:
        assert self.data_dir is not None
        # Only a broker we will stop ourselves can leave a class-data archive behind (it is written at exit).
        self._cds_archive = cds.archive_path(jar_dir, java)
        self._cds_pending = None if self.detach else cds.pending_path(self._cds_archive)
        cmd = [java, "-Xms256m", f"-Xmx{self.heap_max}", "-XX:+UseG1GC", "-XX:+ExitOnOutOfMemoryError",
               *cds.jvm_flags(self._cds_archive, self._cds_pending),
               "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
               f"-Dkafka.logs.dir={self.data_dir}", "-cp", f"{jar_dir}/*", "kafka.Kafka",
               str(self.data_dir / PROPS_FILE)]
        # A persistent broker gets SIGTERM (clean shutdown keeps its log dir tidy); a throw-away one SIGKILL.
        preexec = None if self.detach else _die_with_parent(signal.SIGTERM if self.persistent else signal.SIGKILL)
        with self.log_path.open("ab" if self.persistent else "wb") as out:
            out.write(f"=== agentwatch: starting Kafka {self.kafka_version} on {self.bootstrap_servers} at "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
            out.flush()
            self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            cwd=self.data_dir, start_new_session=True, preexec_fn=preexec)
        self.last_pid = self.process.pid
        if not self.detach:
            _LIVE.add(self)

    def _wait_ready(self) -> None:
        """Poll until the broker answers a metadata request with our cluster id (not some other listener's)."""
        assert self.process is not None and self.port is not None
        deadline = time.monotonic() + self.startup_timeout
        admin: AdminClient | None = None
        while True:
            rc = self.process.poll()
            if rc is not None:
                hint = ""
                if _PORT_CLASH in log_tail(self.log_path, 400):
                    taken = [str(p) for p in (self.port, self.controller_port) if p and port_open(p)]
                    hint = f" (port {' / '.join(taken) or f'{self.port} or {self.controller_port}'} is already in use)"
                raise BrokerError(with_tail(f"Kafka exited with code {rc} while starting on "
                                            f"{self.bootstrap_servers}{hint}", self.log_path))
            if time.monotonic() > deadline:
                raise BrokerError(with_tail(f"Kafka did not answer on {self.bootstrap_servers} within "
                                            f"{self.startup_timeout:.0f}s", self.log_path))
            if admin is None:
                if not port_open(self.port):
                    time.sleep(0.1)
                    continue
                admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "log_level": 2})
            try:
                md = admin.list_topics(timeout=1.0)
                if md.brokers and md.cluster_id == self.cluster_id:
                    return
            except KafkaException:
                pass
            time.sleep(0.1)

    # -- helpers ----------------------------------------------------------------------------------------------
    def _state_path(self) -> Path:
        assert self.data_dir is not None
        return self.data_dir / STATE_FILE

    def _load_state(self) -> dict[str, object]:
        try:
            state = json.loads(self._state_path().read_text())
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def _kill_quietly(self) -> None:
        with contextlib.suppress(Exception):
            if self.process is not None:
                terminate(self.process.pid, 5.0, self.process)
        self.process = None
        _LIVE.discard(self)
        self._settle_cds(clean_exit=False)

    def _settle_cds(self, clean_exit: bool) -> None:
        if self._cds_pending is not None and self._cds_archive is not None:
            cds.adopt(self._cds_pending, self._cds_archive, clean_exit)
        self._cds_pending = None

    def _discard_data_dir(self) -> None:
        if self.data_dir is not None and self.data_dir.name.startswith(SCRATCH_PREFIX):
            shutil.rmtree(self.data_dir, ignore_errors=True)


def _int_or_none(value: object) -> int | None:
    return int(value) if isinstance(value, int | str) and str(value).isdigit() else None


def _free_port_except(taken: int | None) -> int:
    for port in free_ports(3):
        if port != taken:
            return port
    raise BrokerError("could not find a free port")


_LIVE: set[LocalKafka] = set()


@atexit.register
def _stop_all() -> None:
    """Interpreter exit stops every broker this process started and did not detach."""
    for kafka in list(_LIVE):
        with contextlib.suppress(Exception):
            kafka.stop()
