"""``agentwatch traces run`` on a real broker into an OTLP/HTTP receiver that decodes the protobuf: the span tree
arrives whole, offsets are held back while a turn is open, a SIGKILL loses no turn, a backend that is down stops
the sink uncommitted and a rerun delivers everything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from otlp_receiver import OtlpReceiver, ReceivedSpan
from trace_session import HOST_SPAN_ID, HOST_TRACE_ID, crafted_session

from agentwatch.cli import main
from producers.publisher import EventPublisher
from producers.simulator import FleetSimulator
from sinks.traces import build_turn_spans, turn_key

pytestmark = pytest.mark.kafka
ROOT = Path(__file__).resolve().parents[1]


def publish(bootstrap: str, topic: str, events: list[dict[str, Any]]) -> None:
    pub = EventPublisher(bootstrap, topic, linger_ms=5, batch_max_events=10)
    try:
        for e in events:
            assert pub.publish(e)
        assert pub.flush(30)
    finally:
        pub.close()
    assert pub.stats["delivered"] == len(events)


def committed(bootstrap: str, topic: str, group: str, partitions: int) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        return {tp.partition: tp.offset for tp in c.committed(
            [TopicPartition(topic, p) for p in range(partitions)], timeout=10)}
    finally:
        c.close()


def records(bootstrap: str, topic: str) -> list[tuple[int, int, list[dict[str, Any]]]]:
    """(partition, offset, events) of every record on ``topic`` (1 partition)."""
    from schemas.codec import AvroCodec

    codec = AvroCodec()
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"peek-{time.time_ns()}", "enable.auto.commit": False,
                  "auto.offset.reset": "earliest", "enable.partition.eof": True})
    c.assign([TopicPartition(topic, 0, 0)])
    out = []
    try:
        while True:
            m = c.poll(5)
            assert m is not None
            if m.error():
                break
            out.append((m.partition(), m.offset(), codec.decode(m.value()).events))
    finally:
        c.close()
    return out


def tree(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    out: dict[str, ReceivedSpan] = {}
    for s in spans:
        out.setdefault(s.name, s)
    return out


def test_traces_run_exports_the_turn_tree_and_holds_back_an_open_turn(kafka_bootstrap, make_topic, monkeypatch,
                                                                      capsys):
    topic = make_topic(partitions=1)
    events = crafted_session()
    publish(kafka_bootstrap, topic, events)
    group = f"traces-{topic}"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=s3cr%20t")
    with OtlpReceiver() as r:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", r.endpoint.removesuffix("/v1/traces"))
        code = main(["traces", "run", "--bootstrap-servers", kafka_bootstrap, "--topic", topic, "--group", group,
                     "--until-end"])
        err = capsys.readouterr().err
        assert code == 0, err
        assert "1 turn(s) still open" in err
        assert {h.get("x-api-key") for h in r.headers_seen} == {"s3cr t"}
        spans = list(r.spans)
        assert len(spans) == 7
        by = tree(spans)
        root = by["invoke_agent support"]
        assert {s.trace_id for s in spans} == {HOST_TRACE_ID}
        assert root.parent_span_id == HOST_SPAN_ID
        assert root.resource["service.name"] == "support-bot"
        assert root.attributes["gen_ai.conversation.id"] == "sess-trace-1"
        chat = [s for s in spans if s.name == "chat gpt-5-mini"]
        assert {c.parent_span_id for c in chat} == {root.span_id}
        assert sorted(c.attributes["gen_ai.usage.input_tokens"] for c in chat) == [1200, 2000]
        assert [e[0] for e in chat[0].events] == ["gen_ai.retry", "gen_ai.retry"]
        shell = by["execute_tool run_shell_command"]
        assert shell.status_code == 2 and shell.attributes["error.type"] == "CalledProcessError"
        assert [e[0] for e in shell.events] == ["agentwatch.confirmation.requested",
                                                "agentwatch.confirmation.resolved"]
        sub = by["invoke_agent generalist"]
        assert sub.parent_span_id == by["execute_tool generalist"].span_id
        assert by["execute_tool read_file"].parent_span_id == sub.span_id

        # turn-2 is open: the commit stops at its first record, so a crash cannot lose it
        recs = records(kafka_bootstrap, topic)
        first_open = min(o for _, o, evs in recs for e in evs if e.get("turn_id") == "turn-2")
        assert committed(kafka_bootstrap, topic, group, 1) == {0: first_open}

        # a later run closes it after the turn time-out (wall clock: no more events come), marked
        r.spans.clear()
        code = main(["traces", "run", "--bootstrap-servers", kafka_bootstrap, "--topic", topic, "--group", group,
                     "--turn-timeout", "1", "--idle-timeout", "4"])
        assert code == 0, capsys.readouterr().err
        roots = [s for s in r.spans if s.name == "invoke_agent support"]
        assert len(roots) == 1 and roots[0].attributes["agentwatch.turn.id"] == "turn-2"
        assert roots[0].status_code == 2 and roots[0].attributes["agentwatch.turn.closed_by"] == "timeout"
        chat = tree(r.spans)["chat gpt-5-mini"]
        assert chat.status_code == 2 and chat.attributes["error.type"] == "InternalServerError"
        assert committed(kafka_bootstrap, topic, group, 1) == {0: recs[-1][1] + 1}


def test_a_backend_that_is_down_stops_the_sink_uncommitted_and_a_rerun_delivers(kafka_bootstrap, make_topic,
                                                                                 monkeypatch, capsys):
    topic = make_topic(partitions=1)
    publish(kafka_bootstrap, topic, crafted_session(open_second_turn=False))
    group = f"traces-{topic}"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1")
    with OtlpReceiver() as r:
        r.fail_next = 10_000
        code = main(["traces", "run", "--bootstrap-servers", kafka_bootstrap, "--topic", topic, "--group", group,
                     "--until-end", "--endpoint", r.endpoint, "--export-retry", "2"])
        err = capsys.readouterr().err
        assert code == 1 and "stopped without committing" in err, err
        assert r.refused >= 2 and r.spans == []
        assert committed(kafka_bootstrap, topic, group, 1)[0] < 0, "nothing committed"
        r.fail_next = 0
        code = main(["traces", "run", "--bootstrap-servers", kafka_bootstrap, "--topic", topic, "--group", group,
                     "--until-end", "--endpoint", r.endpoint])
        assert code == 0, capsys.readouterr().err
        assert len(r.spans) == 7


def test_sigkill_mid_stream_loses_no_turn_and_a_reexport_repeats_the_same_spans(kafka_bootstrap, make_topic,
                                                                                tmp_path):
    topic = make_topic(partitions=3)
    events = list(FleetSimulator(seed=5, tenants=["acme", "globex"], services=1, duration_s=90).events())
    publish(kafka_bootstrap, topic, events)
    ended = {turn_key(e) for e in events if e["type"] == "turn_end"}
    by_turn: dict[Any, list[dict[str, Any]]] = {}
    for e in events:
        k = turn_key(e)
        if k in ended:
            by_turn.setdefault(k, []).append(e)
    expected = {(f"{s.trace_id:032x}", f"{s.span_id:016x}"): s for evs in by_turn.values()
                for s in build_turn_spans(evs)}
    group = f"traces-{topic}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with OtlpReceiver() as r:
        r.delay_s = 0.2
        cmd = [sys.executable, "-m", "agentwatch", "traces", "run", "--bootstrap-servers", kafka_bootstrap,
               "--topic", topic, "--group", group, "--until-end", "--endpoint", r.endpoint]
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while len(r.spans) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        before = len(r.spans)
        assert 0 < before < len(expected), "killed mid-stream"
        r.delay_s = 0.0
        done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    got: dict[tuple[str, str], list[ReceivedSpan]] = {}
    for s in r.spans:
        got.setdefault((s.trace_id, s.span_id), []).append(s)
    assert got.keys() == expected.keys(), "every ended turn, nothing else (open turns wait)"
    for key, copies in got.items():
        want = expected[key]
        for s in copies:  # a re-export is the same span, not a new one
            assert (s.name, s.start_ns, s.end_ns) == (want.name, want.start_ns, want.end_ns)
