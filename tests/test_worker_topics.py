"""The worker's internal topics fit its events topic (issue 11, item 4): created with the events topic's partition
count, and a worker whose existing internal topics disagree refuses at start with one line, before Faust would die
of PartitionsMismatch."""

from __future__ import annotations

import pytest
from confluent_kafka.admin import AdminClient

from agentwatch.cli import build_parser
from agentwatch.commands.topics import sized_topics
from agentwatch.commands.worker import partition_mismatches
from agentwatch.config import Settings
from agentwatch.startup import StartupError
from agentwatch.topics import TopicSpec, ensure_topics
from streams.options import TENANT_TABLE, WINDOW_TABLE, changelog_topic


def counts_of(settings: Settings, events: int, partials: int, window: int, tenant: int) -> dict[str, int | None]:
    t = settings.topics
    return {t.events: events, t.partials: partials, changelog_topic(settings.app_id, WINDOW_TABLE): window,
            changelog_topic(settings.app_id, TENANT_TABLE): tenant}


def test_mismatches_name_each_topic_and_what_it_needs():
    settings = Settings()
    assert partition_mismatches(settings, counts_of(settings, 3, 3, 3, 3)) == []
    events = settings.topics.events
    # the tenant table follows the partials topic, which has 6: consistent with it, so not named
    assert partition_mismatches(settings, counts_of(settings, 3, 6, 6, 6)) == [
        f"{settings.topics.partials} has 6 partitions, needs 3 (as many as {events})",
        f"{changelog_topic(settings.app_id, WINDOW_TABLE)} has 6 partitions, needs 3 (as many as {events})"]
    assert partition_mismatches(settings, counts_of(settings, 3, 3, 3, 4)) == [
        f"{changelog_topic(settings.app_id, TENANT_TABLE)} has 4 partitions, needs 3 "
        f"(as many as {settings.topics.partials})"]
    assert partition_mismatches(settings, {settings.topics.events: 3}) == []  # missing topics are another error


def test_internal_topics_follow_an_existing_events_topic():
    settings = Settings(events_partitions=6)
    specs = {s.name: s.partitions for s in sized_topics(settings, 3)}
    t = settings.topics
    assert specs[t.events] == specs[t.partials] == 3
    assert specs[changelog_topic(settings.app_id, WINDOW_TABLE)] == 3
    assert specs[changelog_topic(settings.app_id, TENANT_TABLE)] == 3
    assert {s.name: s.partitions for s in sized_topics(settings, None)}[t.partials] == 6  # no events topic yet


def _partitions(bootstrap: str, names: list[str]) -> dict[str, int]:
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics
    return {n: len(md[n].partitions) for n in names if n in md}


def test_worker_refuses_internal_topics_that_do_not_fit(settings, kafka_bootstrap):
    t = settings.topics
    # the events topic with 3 partitions (as `topics create --partitions 3`) but a window changelog with 6 (as the
    # old `worker --create-topics` made): the worker would die ~10 s later with PartitionsMismatch
    window = changelog_topic(settings.app_id, WINDOW_TABLE)
    specs = {s.name: s for s in sized_topics(settings, 3)}
    ensure_topics(kafka_bootstrap, [s if s.name != window else TopicSpec(window, 6, -1, "compact")
                                    for s in specs.values()])
    args = build_parser().parse_args(["worker"])
    with pytest.raises(StartupError) as info:
        args.func(args, settings)
    assert f"{window} has 6 partitions, needs 3 (as many as {t.events})" in str(info.value)
    assert "PartitionsMismatch" in str(info.value)


def test_create_topics_sizes_internal_topics_from_the_events_topic(settings, kafka_bootstrap):
    t = settings.topics
    ensure_topics(kafka_bootstrap, [TopicSpec(t.events, 2, 3_600_000)])  # made elsewhere, with 2 partitions
    specs = sized_topics(settings.with_(events_partitions=6), _partitions(kafka_bootstrap, [t.events])[t.events])
    ensure_topics(kafka_bootstrap, specs)
    names = [t.partials, changelog_topic(settings.app_id, WINDOW_TABLE), changelog_topic(settings.app_id, TENANT_TABLE)]
    assert set(_partitions(kafka_bootstrap, names).values()) == {2}
    counts = _partitions(kafka_bootstrap, [s.name for s in specs])
    assert partition_mismatches(settings, dict(counts)) == []


def test_worker_create_topics_next_to_a_3_partition_events_topic_runs(settings, kafka_bootstrap, tmp_path):
    """The reported sequence: a 3-partition events topic, then `worker --create-topics`; the worker used to make
    6-partition internal topics and die ~10 s later with PartitionsMismatch. It also serves the self-monitoring
    metrics next to its own on --metrics-port."""
    import socket
    import time
    import urllib.request

    from worker_support import start_worker, wait_until

    t = settings.topics
    ensure_topics(kafka_bootstrap, [TopicSpec(t.events, 3, 3_600_000)])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    worker = start_worker(settings, tmp_path, "--create-topics", "--metrics-port", str(port))
    try:
        names = [t.partials, changelog_topic(settings.app_id, WINDOW_TABLE),
                 changelog_topic(settings.app_id, TENANT_TABLE)]
        wait_until(lambda: len(_partitions(kafka_bootstrap, names)) == 3, 60, alive=[worker])
        assert set(_partitions(kafka_bootstrap, names).values()) == {3}

        def metrics() -> str:
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            except OSError:
                return ""

        body = wait_until(lambda: (m := metrics()) and 'agentwatch_kafka_connected{component="worker"} 1.0' in m
                          and f'topic="{t.events}"' in m and m, 60, alive=[worker])
        assert "agentwatch_worker_" in body and "agentwatch_component_info" in body
        time.sleep(15)  # past the moment it used to die
        assert worker.proc.poll() is None, worker.log()[-3000:]
        assert "PartitionsMismatch" not in worker.log()
    finally:
        worker.stop()
