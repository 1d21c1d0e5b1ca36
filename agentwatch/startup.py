"""Start-up checks: what a command needs before it does any work, each failing with one line that says what is
wrong and what to do (:class:`StartupError`; the CLI prints it without a traceback and exits 2).

* :func:`wait_for_kafka`: a broker of the cluster answers a metadata request, waiting at most the start-up timeout
  (``--kafka-timeout`` / ``AGENTWATCH_KAFKA_STARTUP_TIMEOUT``, default 10 s: long enough for a broker that starts
  next to the command in compose, short enough for a typo to show at once). A TCP connect to each bootstrap address
  comes first, so the error names the reason (connection refused, unknown host, timed out) rather than librdkafka's
  generic transport failure; then a metadata request proves it is Kafka.
* :func:`port_in_use`: the error for a listening port that is taken.
* :func:`require_writable_dir`: a directory a sink writes to can be created and written.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import time
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from agentwatch.kafka_log import quiet_admin

START_HINT = ("start one (`agentwatch broker start`) or point --bootstrap-servers / KAFKA_BOOTSTRAP_SERVERS at "
              "yours")


class StartupError(Exception):
    """A command cannot start; the message says what is wrong and what to do, in one or two lines."""


def parse_bootstrap(bootstrap_servers: str) -> list[tuple[str, int]]:
    """``"h1:9092,PLAINTEXT://h2:9093,[::1]:9092"`` -> ``[("h1", 9092), ("h2", 9093), ("::1", 9092)]``;
    StartupError for an address without a port."""
    out = []
    for item in (s.strip() for s in bootstrap_servers.split(",")):
        if not item:
            continue
        if "://" in item:
            item = item.split("://", 1)[1]
        host, sep, port = item.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise StartupError(f"bootstrap server {item!r} is not HOST:PORT; fix --bootstrap-servers / "
                               "KAFKA_BOOTSTRAP_SERVERS")
        out.append((host.strip("[]"), int(port)))
    if not out:
        raise StartupError("no Kafka bootstrap servers given; set --bootstrap-servers or KAFKA_BOOTSTRAP_SERVERS")
    return out


def _tcp_reason(host: str, port: int, timeout: float) -> str | None:
    """None when ``host:port`` accepts a TCP connection, else why not, in a few words."""
    try:
        with socket.create_connection((host, port), timeout=max(timeout, 0.05)):
            return None
    except socket.gaierror:
        return f"cannot resolve host {host!r}"
    except TimeoutError:
        return "connection timed out"
    except OSError as exc:
        return (exc.strerror or str(exc)).lower()


def wait_for_kafka(bootstrap_servers: str, timeout_s: float, *, announce: bool = True) -> None:
    """Return once a broker of ``bootstrap_servers`` answers a metadata request; StartupError after ``timeout_s``.

    ``announce``: after the first failed attempt, say once on stderr what it waits for (a silent 10 s looks hung).
    """
    addresses = parse_bootstrap(bootstrap_servers)
    deadline = time.monotonic() + timeout_s
    said = False
    reasons: dict[str, str] = {}
    while True:
        remaining = deadline - time.monotonic()
        reachable = False
        for host, port in addresses:
            reason = _tcp_reason(host, port, min(2.0, remaining))
            if reason is None:
                reachable = True
                break
            reasons[f"{host}:{port}"] = reason
        if reachable:
            admin = AdminClient(quiet_admin({"bootstrap.servers": bootstrap_servers}))
            try:
                admin.list_topics(timeout=max(deadline - time.monotonic(), 1.0))
                return
            except KafkaException as exc:
                err = exc.args[0] if exc.args else exc
                text = err.str() if hasattr(err, "str") else str(err)
                raise StartupError(f"something listens at {bootstrap_servers} but did not answer as a Kafka broker "
                                   f"within {timeout_s:g} s ({text}); check the address and port (the broker's "
                                   "PLAINTEXT listener), or raise --kafka-timeout") from None
        why = "; ".join(reasons.values()) if len(addresses) == 1 else \
            "; ".join(f"{a}: {r}" for a, r in reasons.items())
        if time.monotonic() >= deadline:
            raise StartupError(f"no Kafka broker at {bootstrap_servers} within {timeout_s:g} s ({why}); {START_HINT} "
                               "(--kafka-timeout / AGENTWATCH_KAFKA_STARTUP_TIMEOUT waits longer)")
        if announce and not said:
            said = True
            print(f"waiting up to {timeout_s:g} s for Kafka at {bootstrap_servers} ({why})", file=sys.stderr,
                  flush=True)
        time.sleep(min(0.5, max(deadline - time.monotonic(), 0)))


def port_in_use(exc: OSError, addr: str, port: int, flag: str) -> StartupError:
    """The error for ``exc`` raised while binding ``addr:port`` (taken, not allowed, no such address)."""
    if exc.errno == errno.EADDRINUSE:
        return StartupError(f"port {port} on {addr} is already in use (another instance?); choose another with "
                            f"{flag}, or stop what listens there")
    if exc.errno == errno.EACCES:
        return StartupError(f"not allowed to listen on {addr}:{port} (ports below 1024 need privileges); choose "
                            f"another with {flag}")
    if exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
        return StartupError(f"cannot listen on {addr}:{port}: {exc.strerror or exc}; set --listen-addr / "
                            "AGENTWATCH_LISTEN_ADDR to an address of this host (127.0.0.1, 0.0.0.0)")
    return StartupError(f"cannot listen on {addr}:{port}: {exc.strerror or exc}")


def require_writable_dir(path: Path, what: str, hint: str) -> None:
    """``path`` is a writable directory, or can be created (its nearest existing ancestor is a writable directory);
    StartupError naming ``what`` and the ``hint`` (the flag or variable that moves it) otherwise. Nothing is created:
    the store makes its directories itself, with its own permissions (0700)."""
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        reason = f"{probe} is not a directory"
    elif not os.access(probe, os.W_OK | os.X_OK):
        reason = f"no permission to write in {probe}" if probe != path else "no write permission"
    else:
        return
    raise StartupError(f"the {what} {path} is not writable ({reason}); fix its permissions or choose another with "
                       f"{hint}")


def require_free_port(addr: str, port: int | None, flag: str) -> None:
    """``addr:port`` can be bound now (None and 0 always can): checked before the slow parts of a start-up, so a
    taken port fails at once rather than after waiting for Kafka; the real bind later reports a lost race the same
    way."""
    if not port:
        return
    with socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((addr, port))
        except OSError as exc:
            raise port_in_use(exc, addr, port, flag) from None
