"""Shared fixtures: one real Kafka broker per test session, started only when a test needs one.

Where the broker comes from, first match wins:
1. ``KAFKA_BOOTSTRAP_SERVERS`` is set: that broker (nothing is started or stopped);
2. a Docker engine answers: a testcontainers Kafka container (KRaft, auto-create off like the local one);
3. otherwise agentwatch's own launcher: a real Apache Kafka JVM on 127.0.0.1 (``agentwatch.broker.launcher``).

Tests that use ``kafka_bootstrap``, ``kafka_broker``, ``make_topic`` or ``kafka_settings`` are marked ``kafka``
automatically, so ``pytest -m "not kafka"`` runs the unit tests without starting anything. The ``settings``
fixture only asks for the broker when its test is marked ``kafka``; elsewhere it points at a closed port.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from agentwatch.broker.launcher import LocalKafka
from agentwatch.config import Settings, TopicNames
from agentwatch.topics import TopicSpec, default_topics, ensure_topics

KAFKA_FIXTURES = frozenset({"kafka_broker", "kafka_bootstrap", "make_topic", "kafka_settings"})
# Confluent's image, because testcontainers' KafkaContainer scripts its start-up; 7.9 is Apache Kafka 3.9 (KRaft).
CONTAINER_IMAGE = "confluentinc/cp-kafka:7.9.0"
UNREACHABLE = "127.0.0.1:9"  # nothing listens on the discard port: accidental connections fail fast


@dataclass(frozen=True)
class KafkaBroker:
    """The session's broker: where it is, what kind it is, and the launcher when agentwatch started it."""

    bootstrap_servers: str
    kind: str  # "env" | "container" | "local"
    local: LocalKafka | None = None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if KAFKA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.kafka)


def docker_reachable(timeout: float = 2.0) -> bool:
    """True when a Docker engine answers a ping; cheap and silent when there is none."""
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    try:
        import docker

        client = docker.from_env(timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


@contextlib.contextmanager
def _container_kafka() -> Iterator[str]:
    try:
        from testcontainers.community.kafka import KafkaContainer
    except ImportError:  # testcontainers < 4.10
        from testcontainers.kafka import KafkaContainer
    container = (KafkaContainer(CONTAINER_IMAGE).with_kraft()
                 .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
                 .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
                 .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1"))
    with container:
        yield container.get_bootstrap_server()


def _progress_printer(config: pytest.Config) -> Callable[[str], None]:
    """Print past pytest's output capture: the first run resolves the broker jars, which takes a while."""
    capman = config.pluginmanager.getplugin("capturemanager")

    def progress(message: str) -> None:
        ctx = capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext()
        with ctx:
            print(f"\n[kafka] {message}", flush=True)

    return progress


@pytest.fixture(scope="session")
def kafka_broker(pytestconfig: pytest.Config) -> Iterator[KafkaBroker]:
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield KafkaBroker(configured, "env")
        return
    if docker_reachable():
        with _container_kafka() as bootstrap:
            yield KafkaBroker(bootstrap, "container")
        return
    progress = _progress_printer(pytestconfig)
    with LocalKafka(Settings.from_env().home, progress=progress) as kafka:
        progress(f"Apache Kafka {kafka.kafka_version} started on {kafka.bootstrap_servers} (pid {kafka.pid})")
        yield KafkaBroker(kafka.bootstrap_servers, "local", kafka)


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: KafkaBroker) -> str:
    return kafka_broker.bootstrap_servers


def delete_topics(bootstrap_servers: str, names: list[str], timeout: float = 10.0) -> None:
    """Best-effort clean-up so a shared broker does not fill with test topics."""
    if not names:
        return
    admin = AdminClient({"bootstrap.servers": bootstrap_servers, "log_level": 2})
    for fut in admin.delete_topics(names, operation_timeout=timeout).values():
        with contextlib.suppress(Exception):
            fut.result(timeout)


def _slug(text: str, limit: int = 60) -> str:
    return re.sub(r"[^A-Za-z0-9-]+", "-", text).strip("-")[:limit] or "t"


@pytest.fixture
def make_topic(kafka_bootstrap: str, request: pytest.FixtureRequest) -> Iterator[Callable[..., str]]:
    """Factory: ``make_topic(partitions=1, retention_ms=3_600_000, cleanup_policy="delete", config=None)``.

    Creates a uniquely named topic (named after the test) with ``ensure_topics`` and deletes it afterwards;
    ``config`` adds topic configs such as ``{"max.message.bytes": "8388608"}``.
    """
    created: list[str] = []

    def make(partitions: int = 1, *, retention_ms: int = 3_600_000, cleanup_policy: str = "delete",
             config: dict[str, str] | None = None) -> str:
        name = f"test-{_slug(request.node.name)}-{uuid.uuid4().hex[:10]}"
        ensure_topics(kafka_bootstrap, [TopicSpec(name, partitions, retention_ms, cleanup_policy, dict(config or {}))])
        created.append(name)
        return name

    yield make
    delete_topics(kafka_bootstrap, created)


def unique_topic_names() -> TopicNames:
    prefix = f"test.{uuid.uuid4().hex[:12]}"
    return TopicNames(events=f"{prefix}.events", dead_letter=f"{prefix}.events.dlq",
                      metrics=f"{prefix}.metrics", alerts=f"{prefix}.alerts")


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """Settings with unique topic names and private home/spool dirs; the real broker only for ``kafka`` tests.

    Topics are not created (use ``kafka_settings`` for that); any the test creates are deleted afterwards.
    """
    is_kafka = request.node.get_closest_marker("kafka") is not None
    bootstrap = request.getfixturevalue("kafka_bootstrap") if is_kafka else UNREACHABLE
    value = Settings(bootstrap_servers=bootstrap, topics=unique_topic_names(), events_partitions=3,
                     home=tmp_path / "home", spool_dir=tmp_path / "spool", tenant="test")
    yield value
    if is_kafka:
        delete_topics(bootstrap, [spec.name for spec in default_topics(value)])


@pytest.fixture
def kafka_settings(settings: Settings) -> Settings:
    """``settings`` with all of agentwatch's topics created on the session broker."""
    ensure_topics(settings.bootstrap_servers, default_topics(settings), settings.replication_factor)
    return settings
