"""The local Kafka launcher, the ``broker`` and ``topics`` commands, and the broker they give the tests.

Tests that stop or break a broker start their own ``LocalKafka``; they never touch the shared session broker.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, ConfigSource, ResourceType

from agentwatch.broker import cds, daemon, jars
from agentwatch.broker.errors import BrokerError, excerpt
from agentwatch.broker.launcher import (
    LocalKafka,
    free_ports,
    is_kafka_process,
    java_executable,
    pid_alive,
    sweep_stale_scratch,
)
from agentwatch.broker.properties import new_cluster_id, parse, render, server_properties
from agentwatch.commands import broker as broker_cmd
from agentwatch.commands import topics as topics_cmd
from agentwatch.config import Settings, TopicNames
from agentwatch.topics import DAY_MS, TopicSpec, default_topics, ensure_topics

JAR_HOME = Settings.from_env().home  # the shared jar cache; each test's broker data lives elsewhere


def _run(argv: list[str], settings: Settings) -> int:
    """Run one of this module's subcommands through its real argparse parser."""
    parser = argparse.ArgumentParser(prog="agentwatch")
    sub = parser.add_subparsers(dest="command")
    broker_cmd.register(sub)
    topics_cmd.register(sub)
    args = parser.parse_args(argv)
    return int(args.func(args, settings))


def _wait_gone(pid: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not pid_alive(pid)


def _unique_names() -> TopicNames:
    p = f"test.broker.{uuid.uuid4().hex[:10]}"
    return TopicNames(events=f"{p}.events", dead_letter=f"{p}.dlq", metrics=f"{p}.metrics", alerts=f"{p}.alerts")


# -- pure parts, no broker -------------------------------------------------------------------------------------


def test_cluster_id_is_kafka_uuid_text() -> None:
    ids = {new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{22}", i) and not i.startswith("-") for i in ids)
    raw = bytes(range(1, 17))
    assert new_cluster_id(raw) == base64.urlsafe_b64encode(raw).decode().rstrip("=")
    with pytest.raises(ValueError):
        new_cluster_id(bytes(16))  # Uuid.ZERO_UUID is reserved
    with pytest.raises(ValueError):
        new_cluster_id(b"\xf8" + bytes(15))  # encodes to "-...": would read as a flag


def test_server_properties_are_tuned_for_tests(tmp_path: Path) -> None:
    props = server_properties(19092, 19093, tmp_path / "logs", {"num.partitions": "2"})
    assert props["auto.create.topics.enable"] == "false"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["offsets.topic.num.partitions"] == "1"
    assert props["offsets.topic.replication.factor"] == props["transaction.state.log.replication.factor"] == "1"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:19093"
    assert props["log.dirs"] == str(tmp_path / "logs")
    assert props["num.partitions"] == "2"
    assert parse(render(props)) == props


def test_jar_cache_is_trusted_only_with_its_marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pom = tmp_path / "pom.xml"
    shutil.copyfile(jars.POM, pom)
    home = tmp_path / "home"
    version = jars.kafka_version(pom)
    target = jars.jars_dir(home, pom)
    assert target == home / f"jars-{version}"
    target.mkdir(parents=True)
    (target / f"kafka_2.13-{version}.jar").write_bytes(b"")
    assert not jars.is_complete(target, pom)  # a copy that never finished
    monkeypatch.setattr(jars.shutil, "which", lambda _name: None)
    with pytest.raises(BrokerError, match="Maven"):  # so an unfinished copy is redone
        jars.resolve_jars(home, pom)
    (target / jars.MARKER).write_text("0123456789abcdef\n")
    assert not jars.is_complete(target, pom)  # made from another POM
    (target / jars.MARKER).write_text(jars.pom_digest(pom) + "\n")
    assert jars.is_complete(target, pom)
    assert jars.resolve_jars(home, pom) == target  # no Maven needed (it is "missing" here)
    pom.write_text(pom.read_text().replace("<version>1</version>", "<version>2</version>"))
    assert not jars.is_complete(target, pom)


def test_class_data_archive_is_published_only_after_a_clean_exit(tmp_path: Path) -> None:
    archive = cds.archive_path(tmp_path, sys.executable)
    assert archive.parent == tmp_path and archive.suffix == ".jsa"
    pending = cds.pending_path(archive)
    assert cds.jvm_flags(archive, pending) == [f"-XX:ArchiveClassesAtExit={pending}"]
    assert cds.jvm_flags(archive, None) == []
    pending.write_bytes(b"half")
    assert not cds.adopt(pending, archive, clean_exit=False)
    assert not archive.exists() and not pending.exists()
    pending.write_bytes(b"whole")
    assert cds.adopt(pending, archive, clean_exit=True)
    assert archive.read_bytes() == b"whole" and not pending.exists()
    assert cds.jvm_flags(archive, cds.pending_path(archive)) == [f"-XX:SharedArchiveFile={archive}"]


def test_settings_of_a_unit_test_point_at_no_broker(settings: Settings, tmp_path: Path) -> None:
    assert settings.bootstrap_servers == "127.0.0.1:9"
    names = [settings.topics.events, settings.topics.dead_letter, settings.topics.metrics, settings.topics.alerts]
    assert len(set(names)) == 4 and all(n.startswith("test.") for n in names)
    assert names != [s.name for s in default_topics(Settings())]
    assert settings.spool_dir == tmp_path / "spool" and settings.home == tmp_path / "home"


@pytest.mark.parametrize("persistent", [True, False])
def test_the_broker_data_directory_is_private(tmp_path: Path, persistent: bool) -> None:
    """The log segments the JVM writes are 0644, so the data directory must be 0700 (issue 12); an existing,
    world-readable persistent directory is tightened on the next start."""
    data_dir = tmp_path / "kafka-data"
    if persistent:
        data_dir.mkdir(mode=0o755)
        os.chmod(data_dir, 0o755)
    kafka = LocalKafka(tmp_path, data_dir=data_dir if persistent else None)
    try:
        kafka._prepare_data_dir()  # the step before format and spawn: no JVM needed
        assert kafka.data_dir is not None
        assert kafka.data_dir.stat().st_mode & 0o777 == 0o700
    finally:
        if not persistent and kafka.data_dir is not None:
            shutil.rmtree(kafka.data_dir, ignore_errors=True)


def test_failure_excerpt_keeps_errors_and_drops_stack_frames() -> None:
    log = ("[t] INFO starting\n"
           "[t] ERROR Unable to start acceptor for PLAINTEXT (kafka.network.DataPlaneAcceptor)\n"
           "\tat kafka.network.Acceptor.start(SocketServer.scala:530)\n"
           "Caused by: java.net.BindException: Address already in use\n"
           "\t... 6 more\n")
    assert excerpt(log) == ["[t] ERROR Unable to start acceptor for PLAINTEXT (kafka.network.DataPlaneAcceptor)",
                            "Caused by: java.net.BindException: Address already in use"]
    assert excerpt("one\ntwo\n\tat x\n") == ["one", "two"]


def test_topic_table_shows_broker_values_and_differences() -> None:
    spec = TopicSpec("ev", 6, 7 * DAY_MS)
    broker = {"ev": topics_cmd.TopicState(3, {"retention.ms": str(7 * DAY_MS), "cleanup.policy": "delete"})}
    [row] = topics_cmd.rows([spec], broker, {"ev": "exists"})
    assert (row.partitions, row.retention, row.cleanup_policy) == ("3", "7d", "delete")
    assert row.status == "exists; differs: partitions 3 (code: 6)"
    [row] = topics_cmd.rows([TopicSpec("dlq", 1, 14 * DAY_MS, "compact")], {})
    assert (row.partitions, row.retention, row.cleanup_policy, row.status) == ("1", "14d", "compact", "missing")
    assert [topics_cmd.format_retention(v) for v in (-1, 3_600_000, 1500)] == ["forever", "1h", "1500ms"]
    table = topics_cmd.render([row]).splitlines()
    assert table[0].split() == ["TOPIC", "PARTITIONS", "RETENTION", "CLEANUP", "STATUS"]
    assert table[1].split() == ["dlq", "1", "14d", "compact", "missing"]


def test_broker_start_port_follows_a_loopback_bootstrap() -> None:
    assert broker_cmd.default_port(Settings(bootstrap_servers="127.0.0.1:19092")) == 19092
    assert broker_cmd.default_port(Settings(bootstrap_servers="localhost:1234,other:1")) == 1234
    assert broker_cmd.default_port(Settings(bootstrap_servers="kafka.internal:9094")) == daemon.DEFAULT_PORT


# -- a running broker ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_kafka(kafka_broker: object) -> Iterator[LocalKafka]:
    """The launcher's broker: the session one when agentwatch started it, else one for this module."""
    local = getattr(kafka_broker, "local", None)
    if local is not None:
        yield local
        return
    with LocalKafka(JAR_HOME) as kafka:
        yield kafka


def test_local_kafka_answers_on_loopback_with_auto_create_off(local_kafka: LocalKafka) -> None:
    assert re.fullmatch(r"127\.0\.0\.1:\d+", local_kafka.bootstrap_servers)
    assert local_kafka.pid is not None and is_kafka_process(local_kafka.pid, str(local_kafka.data_dir))
    admin = AdminClient({"bootstrap.servers": local_kafka.bootstrap_servers})
    md = admin.list_topics(timeout=10)
    assert md.cluster_id == local_kafka.cluster_id
    assert list(md.brokers) == [1]
    resource = ConfigResource(ResourceType.BROKER, "1")
    config = admin.describe_configs([resource])[resource].result(10)
    assert config["auto.create.topics.enable"].value == "false"


def test_produce_consume_round_trip_keeps_key_order(local_kafka: LocalKafka) -> None:
    bootstrap = local_kafka.bootstrap_servers
    topic = f"test-roundtrip-{uuid.uuid4().hex[:10]}"
    ensure_topics(bootstrap, [TopicSpec(topic, 3, DAY_MS)])
    sent = [(f"session-{i % 5}", i) for i in range(300)]
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    failures: list[KafkaError] = []
    for key, seq in sent:
        producer.produce(topic, key=key, value=str(seq).encode(),
                         on_delivery=lambda err, _msg: failures.append(err) if err else None)
    assert producer.flush(30) == 0 and failures == []

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    got: list[tuple[str, int, int]] = []
    deadline = time.monotonic() + 60
    try:
        while len(got) < len(sent) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                got.append((msg.key().decode(), int(msg.value()), msg.partition()))
    finally:
        consumer.close()
    assert sorted(seq for _k, seq, _p in got) == [seq for _k, seq in sent]
    for key in {k for k, _ in sent}:
        mine = [(seq, part) for k, seq, part in got if k == key]
        assert len({part for _seq, part in mine}) == 1, f"{key} spread over partitions"
        assert [seq for seq, _part in mine] == [seq for k, seq in sent if k == key], f"{key} out of order"


def test_topics_get_the_retention_and_cleanup_stated_in_code(local_kafka: LocalKafka,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(bootstrap_servers=local_kafka.bootstrap_servers, topics=_unique_names(), events_partitions=4)
    specs = default_topics(settings)
    assert _run(["topics", "create", "--partitions", "2"], settings) == 0
    table = capsys.readouterr().out
    for spec in specs:
        assert re.search(rf"^{re.escape(spec.name)}\s+\S+\s+\S+\s+{spec.cleanup_policy}\s+created$", table, re.M), table
    assert ensure_topics(settings.bootstrap_servers, specs) == {s.name: "exists" for s in specs}

    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    md = admin.list_topics(timeout=10).topics
    resources = [ConfigResource(ResourceType.TOPIC, s.name) for s in specs]
    configs = {r.name: f.result(10) for r, f in admin.describe_configs(resources).items()}
    for spec in specs:
        assert len(md[spec.name].partitions) == (2 if spec.partitions == 4 else spec.partitions)
        for key, value in spec.config().items():
            entry = configs[spec.name][key]
            assert entry.value == value, (spec.name, key)
            # Set on the topic itself, not inherited from a broker default.
            assert entry.source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value, (spec.name, key)

    assert _run(["topics", "list"], settings) == 0
    listing = capsys.readouterr().out
    events = next(line for line in listing.splitlines() if line.startswith(settings.topics.events + " "))
    assert "differs: partitions 2 (code: 4)" in events
    AdminClient({"bootstrap.servers": settings.bootstrap_servers}).delete_topics([s.name for s in specs])


def test_producing_to_a_missing_topic_fails(local_kafka: LocalKafka) -> None:
    missing = f"test-missing-{uuid.uuid4().hex[:10]}"
    producer = Producer({"bootstrap.servers": local_kafka.bootstrap_servers, "message.timeout.ms": 5000,
                         "topic.metadata.propagation.max.ms": 1000, "log_level": 2})
    outcome: list[KafkaError | None] = []
    try:
        producer.produce(missing, b"x", on_delivery=lambda err, _msg: outcome.append(err))
        producer.flush(20)
    except KafkaException as exc:  # librdkafka may already know the topic is missing
        outcome.append(exc.args[0])
    assert len(outcome) == 1 and outcome[0] is not None
    assert outcome[0].code() in {KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC}, outcome[0]
    admin = AdminClient({"bootstrap.servers": local_kafka.bootstrap_servers})
    assert missing not in admin.list_topics(timeout=10).topics


def test_make_topic_and_kafka_settings_create_what_they_say(
        make_topic: Callable[..., str], kafka_settings: Settings, kafka_bootstrap: str) -> None:
    three, one = make_topic(3), make_topic(config={"max.message.bytes": "2097152"})
    assert three != one and three.startswith("test-test-make-topic")
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    md = admin.list_topics(timeout=10).topics
    assert (len(md[three].partitions), len(md[one].partitions)) == (3, 1)
    resource = ConfigResource(ResourceType.TOPIC, one)
    assert admin.describe_configs([resource])[resource].result(10)["max.message.bytes"].value == "2097152"
    assert kafka_settings.bootstrap_servers == kafka_bootstrap
    assert {s.name for s in default_topics(kafka_settings)} <= set(md)


# -- brokers of their own: stopped, broken, orphaned -----------------------------------------------------------


@pytest.mark.kafka
def test_stop_leaves_no_jvm_and_no_data() -> None:
    kafka = LocalKafka(JAR_HOME)
    with kafka:
        pid, data_dir = kafka.pid, kafka.data_dir
        assert pid is not None and data_dir is not None and pid_alive(pid)
    assert kafka.pid is None and not kafka.running()
    assert not pid_alive(pid) and not is_kafka_process(pid)
    assert not data_dir.exists()
    # A clean stop leaves (or has left before) the class-data archive that speeds up the next start.
    assert cds.archive_path(jars.resolve_jars(JAR_HOME), java_executable()).is_file()


@pytest.mark.kafka
def test_a_jvm_that_cannot_bind_its_port_gives_a_clear_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        kafka = LocalKafka(JAR_HOME, port=port, startup_timeout=120)
        with pytest.raises(BrokerError) as info:
            kafka.start()
    message = str(info.value)
    assert f"Kafka exited with code 1 while starting on 127.0.0.1:{port} (port {port} is already in use)" in message
    assert "Address already in use" in message.split("\n", 1)[1]  # the log excerpt says why
    assert "\tat " not in message
    assert kafka.process is None and kafka.last_pid is not None and not pid_alive(kafka.last_pid)
    assert kafka.data_dir is not None and not kafka.data_dir.exists()


HOLDER = """
import sys, time
from pathlib import Path
from agentwatch.broker.launcher import LocalKafka
kafka = LocalKafka(Path(sys.argv[1])).start()
print(kafka.pid, kafka.data_dir, flush=True)
time.sleep(600)
"""


@pytest.mark.kafka
def test_the_jvm_dies_when_its_python_parent_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    holder = subprocess.Popen([sys.executable, str(script), str(JAR_HOME)], stdout=subprocess.PIPE, text=True)
    watchdog = threading.Timer(240, holder.kill)  # never hang on a holder that does not start
    watchdog.start()
    pid = None
    try:
        line = holder.stdout.readline() if holder.stdout else ""
        assert re.fullmatch(r"\d+ \S+", line.strip()), f"holder did not start a broker (exit {holder.poll()})"
        pid, data_dir = int(line.split()[0]), Path(line.split()[1])
        assert is_kafka_process(pid) and data_dir.is_dir()
        holder.send_signal(signal.SIGKILL)  # no atexit, no finally: only the kernel can clean up
        holder.wait(10)
        assert _wait_gone(pid), f"JVM {pid} outlived its parent"
        sweep_stale_scratch()  # what the next start does with the data dir its dead owner left behind
        assert not data_dir.exists()
    finally:
        watchdog.cancel()
        if holder.poll() is None:
            holder.kill()
        if pid is not None and is_kafka_process(pid):
            os.killpg(pid, signal.SIGKILL)


@pytest.mark.kafka
def test_broker_command_runs_a_persistent_broker(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    home.mkdir()
    shared = jars.resolve_jars(JAR_HOME)
    (home / shared.name).symlink_to(shared)  # reuse the jar cache instead of copying it again
    settings = Settings(home=home)
    port = free_ports(1)[0]
    topic = f"test-persist-{uuid.uuid4().hex[:10]}"
    try:
        assert _run(["broker", "start", "--port", str(port)], settings) == 0
        assert capsys.readouterr().out == f"KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{port}\n"
        state = daemon.default_data_dir(home).resolve()
        first = daemon.running(state)
        assert first is not None and (state / daemon.PID_FILE).read_text().strip() == str(first.pid)
        assert _run(["broker", "start"], settings) == 0  # already running: reported, not restarted
        assert daemon.running(state) == first
        with pytest.raises(BrokerError, match="already runs"):
            daemon.start(home, port=port + 1)
        assert _run(["broker", "status"], settings) == 0
        assert "answering" in capsys.readouterr().out
        # state is per data directory: another user's broker (another data dir, same home) is neither seen nor
        # stopped
        other = str(tmp_path / "other-broker")
        assert _run(["broker", "status", "--data-dir", other], settings) == 1
        assert _run(["broker", "stop", "--data-dir", other], settings) == 0
        assert pid_alive(first.pid) and daemon.running(state) == first

        bootstrap = first.bootstrap_servers
        ensure_topics(bootstrap, [TopicSpec(topic, 2, DAY_MS)])
        producer = Producer({"bootstrap.servers": bootstrap})
        producer.produce(topic, key=b"k", value=b"kept")
        assert producer.flush(20) == 0
        cluster = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).cluster_id

        assert _run(["broker", "stop"], settings) == 0
        assert not pid_alive(first.pid)
        assert daemon.running(state) is None and not (state / daemon.PID_FILE).exists()
        assert _run(["broker", "status"], settings) == 1

        second, started = daemon.start(home, port=port)
        assert started and second.pid != first.pid and second.data_dir == first.data_dir
        assert second.data_dir is not None and Path(second.data_dir).stat().st_mode & 0o777 == 0o700
        md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
        assert md.cluster_id == cluster and len(md.topics[topic].partitions) == 2
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "g"})
        try:
            marks = [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in (0, 1)]
        finally:
            consumer.close()
        assert sum(high - low for low, high in marks) == 1  # the record written before the restart
    finally:
        stopped = daemon.stop(daemon.default_data_dir(home).resolve())
        if stopped is not None:
            assert _wait_gone(stopped.pid)
