"""Start-up checks (agentwatch.startup): each failure is a StartupError whose one line says what and what to do."""

from __future__ import annotations

import os
import socket
import time

import pytest

from agentwatch.startup import (
    StartupError,
    parse_bootstrap,
    require_free_port,
    require_writable_dir,
    wait_for_kafka,
)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends


def test_parse_bootstrap():
    assert parse_bootstrap("a:1, PLAINTEXT://b:2,[::1]:3") == [("a", 1), ("b", 2), ("::1", 3)]
    for bad in ("", "host", "host:port", ":9092"):
        with pytest.raises(StartupError):
            parse_bootstrap(bad)


def test_no_broker_fails_within_the_timeout_naming_the_reason(capsys):
    port = closed_port()
    t0 = time.monotonic()
    with pytest.raises(StartupError) as info:
        wait_for_kafka(f"127.0.0.1:{port}", 1.0)
    elapsed = time.monotonic() - t0
    assert 0.9 <= elapsed < 4.0
    text = str(info.value)
    assert f"no Kafka broker at 127.0.0.1:{port} within 1 s (connection refused)" in text
    assert "agentwatch broker start" in text and "\n" not in text
    assert capsys.readouterr().err.count("\n") == 1  # one "waiting up to" line, said once


def test_unknown_host_is_named():
    with pytest.raises(StartupError, match="cannot resolve host 'no-such-host.invalid'"):
        wait_for_kafka("no-such-host.invalid:9092", 0.5, announce=False)


def test_something_that_is_not_kafka_is_told_apart():
    with socket.socket() as server:  # accepts TCP, never answers Kafka's protocol
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with pytest.raises(StartupError, match="did not answer as a Kafka broker"):
            wait_for_kafka(f"127.0.0.1:{port}", 1.5, announce=False)


def test_a_taken_port_is_refused_with_the_flag_to_change():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StartupError, match=f"port {port} on 127.0.0.1 is already in use.*--metrics-port"):
            require_free_port("127.0.0.1", port, "--metrics-port")
    require_free_port("127.0.0.1", port, "--metrics-port")  # free again
    require_free_port("127.0.0.1", None, "--metrics-port")
    require_free_port("127.0.0.1", 0, "--metrics-port")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_directory_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(StartupError, match="not writable.*--dir"):
        require_writable_dir(locked / "archive", "replay archive", "--dir")


def test_a_directory_that_cannot_exist_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StartupError, match="the audit directory .* is not writable .*AGENTWATCH_AUDIT_DIR"):
        require_writable_dir(tmp_path / "file" / "audit", "audit directory", "--dir / AGENTWATCH_AUDIT_DIR")
    require_writable_dir(tmp_path / "new" / "dir", "audit directory", "--dir")
    assert not (tmp_path / "new").exists()  # nothing created: the store makes it, with its own permissions
