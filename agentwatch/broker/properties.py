"""server.properties for a single-node KRaft broker tuned for tests and demos (pure functions, no I/O).

Loopback only, combined broker+controller, replication factors of 1, no initial rebalance delay, and topic
auto-creation off so that a topic missing from ``agentwatch.topics.default_topics`` fails loudly instead of
appearing with broker defaults.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

HOST = "127.0.0.1"
# Kafka's Uuid.ZERO_UUID and Uuid.METADATA_TOPIC_ID, which Uuid.randomUuid never returns.
_RESERVED = (bytes(16), bytes(15) + b"\x01")


def server_properties(port: int, controller_port: int, log_dir: Path,
                      extra: dict[str, str] | None = None) -> dict[str, str]:
    """The broker's configuration as an ordered mapping; ``extra`` overrides or adds keys."""
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.bootstrap.servers": f"{HOST}:{controller_port}",
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(log_dir),
        "num.partitions": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.num.partitions": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        # Small machines: fewer threads than the defaults, which are sized for production hosts.
        "num.network.threads": "2",
        "num.io.threads": "4",
    }
    props.update(extra or {})
    return props


def render(props: dict[str, str]) -> str:
    return "".join(f"{key}={value}\n" for key, value in props.items())


def parse(text: str) -> dict[str, str]:
    """Read back a file written by :func:`render` (plain ``key=value`` lines, ``#`` comments)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def new_cluster_id(random_bytes: bytes | None = None) -> str:
    """A KRaft cluster id as ``kafka-storage random-uuid`` makes it: 16 random bytes, URL-safe base64, no padding.

    Made here rather than by ``StorageTool random-uuid`` to spare one JVM start (~1.5 s on two cores). Like Kafka's
    ``Uuid.randomUuid`` it never starts with '-' (it would read as a command-line flag) and is never one of the
    reserved ids.
    """
    while True:
        raw = random_bytes if random_bytes is not None else os.urandom(16)
        if len(raw) != 16:
            raise ValueError("a Kafka Uuid has 16 bytes")
        text = base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")
        if not text.startswith("-") and raw not in _RESERVED:
            return text
        if random_bytes is not None:
            raise ValueError("these bytes do not make a valid cluster id")
