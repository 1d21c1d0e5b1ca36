"""Cost of an ``on_event`` call on the agent's thread: stamp + publish, against logging JSON lines to a file.

What the seed's host does per Agentao event is ``logger.info("agent_event", extra={...context, **ev.data})`` with a
JSON formatter (the baseline here, writing to a temporary file). agentwatch's callback stamps the event
(:class:`producers.stamp.Stamper`) and hands it to :meth:`producers.publisher.EventPublisher.publish`, whose
sender thread encodes and produces to a real Kafka broker meanwhile, so the figures include its competition for
the GIL. When the Agentao bridge is importable, its full ``on_event`` (mapping included) is measured too.

Two call patterns, each timed per call with ``perf_counter_ns``:

* ``burst``: back-to-back calls (the sender is busy the whole time: the worst case for the GIL);
* ``paced``: calls spread at ``--rate`` events/s (an agent's real cadence; the sender works between calls).

Measured: stamp + publish, capture + publish (:meth:`producers.stamp.Stamper.capture`: the agent's thread takes
time, order and context only, the publisher's sender thread completes the stamp), the bridge's ``on_event`` as
built by default (with an EventPublisher: capture, shallow copy and enqueue, the mapping deferred to the sender
thread for scalar-only events that feed no bridge state), the bridge with its mapping inline
(``defer_mapping=False``: what the default was before), the same with ``stamper=DeferredStamper(...)`` (capture
instead of stamp), and the bridge's mapping alone (``producers.mapping.fields_from_agentao``).

Goal (issue 13, goal 4): paced p50 <= 10 µs, p99 <= 50 µs. No assertions: the figures and the ratio to the baseline are
printed. Usage::

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 python bench/bench_on_event.py --events 100000
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import confluent_kafka  # noqa: E402
import fastavro  # noqa: E402

from producers.publisher import EventPublisher  # noqa: E402
from producers.stamp import DeferredStamper, Stamper  # noqa: E402


class JsonLineFormatter(logging.Formatter):
    """What ``pythonjsonlogger.JsonFormatter`` does for this use: the record's message and extras as one JSON line."""

    _skip = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message"}

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": self.formatTime(record), "level": record.levelname, "message": record.getMessage()}
        out.update({k: v for k, v in record.__dict__.items() if k not in self._skip})
        return json.dumps(out, default=str)


def agentao_like_events(n: int) -> list[tuple[str, dict[str, Any]]]:
    """A realistic mix of (type, data) as Agentao emits them (tool and LLM events dominate)."""
    shapes: list[tuple[str, dict[str, Any]]] = [
        ("tool_start", {"tool": "read_file", "call_id": "call_abc123", "arguments": {"path": "/src/app.py"}}),
        ("tool_complete", {"tool": "read_file", "call_id": "call_abc123", "status": "ok", "duration_ms": 12,
                           "error": None}),
        ("llm_text", {"chunk": "Here is the summary of the file you asked for."}),
        ("llm_call_completed", {"attempt": 1, "status": "ok", "duration_ms": 840, "model_latency_ms": 840,
                                "first_token_ms": 210, "finish_reason": "tool_calls", "prompt_tokens": 2818,
                                "completion_tokens": 48, "cache_read_tokens": 1409, "cache_creation_tokens": 0,
                                "reasoning_tokens": 7, "error_class": None, "error_message": None}),
        ("tool_output", {"tool": "run_shell_command", "call_id": "call_def456", "chunk": "collected 12 items\n"}),
    ]
    return [shapes[i % len(shapes)] for i in range(n)]


class Latencies(list):
    """Per-call latencies in ns, ``cpu_ns``: the calling thread's CPU time over the whole run, and ``wake``: per
    paced call, how late the thread ran after its sleep (ns): the wait for the GIL (the sender holding it while it
    drains) and the OS scheduler, which the call's own latency does not include (the clock starts after)."""

    cpu_ns = 0
    wake: list[int] = []


def measure(call: Callable[[int], None], n: int, rate: float | None) -> Latencies:
    """Per-call latency in ns; ``rate`` spaces the calls with ``sleep`` (it releases the GIL, as an agent waiting
    on its LLM does; a busy-wait would hold it and charge the sender's forced switches to the timed calls)."""
    lat = Latencies([0] * n)
    wake = []
    clock = time.perf_counter_ns
    interval = int(1e9 / rate) if rate else 0
    cpu0 = time.thread_time_ns()
    next_at = clock()
    for i in range(n):
        slept = False
        if interval:
            next_at += interval
            wait = next_at - clock()
            if wait > 0:
                time.sleep(wait / 1e9)
                slept = True
        t0 = clock()
        if slept:
            wake.append(t0 - next_at)
        call(i)
        lat[i] = clock() - t0
    lat.cpu_ns = time.thread_time_ns() - cpu0
    lat.wake = wake
    return lat


def summary(lat: Latencies) -> dict[str, float]:
    s = sorted(lat)
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))] / 1000  # noqa: E731
    w = sorted(lat.wake) or [0]
    return {"p50": pick(0.50), "p99": pick(0.99), "p99.9": pick(0.999), "mean": statistics.fmean(s) / 1000,
            "cpu": lat.cpu_ns / len(lat) / 1000, "wake99": w[min(len(w) - 1, int(0.99 * len(w)))] / 1000}


def replay(mode: str, n: int) -> int:
    """``AgentaoBridge.on_event`` alone, ``n`` calls, for ``valgrind --tool=cachegrind`` (instructions per call = the
    difference of two ``--events`` counts / their difference; 'setup' measures building the events)."""
    import collections

    from agentao.transport import AgentEvent, EventType

    from producers.agentao_bridge import AgentaoBridge

    class Deque:
        completes_captures = True

        def __init__(self) -> None:
            self.buf: collections.deque[Any] = collections.deque()

        def publish(self, event: Any) -> bool:
            self.buf.append(event)
            return True

    bridge = AgentaoBridge(Deque(), tenant="acme", session_id="bench-session")
    events = [AgentEvent(EventType(etype), dict(payload)) for etype, payload in agentao_like_events(n)]
    for ev in events if mode == "bridge" else ():
        bridge.on_event(ev)
    print(f"replay {mode}: {n} events")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    parser.add_argument("--events", type=int, default=100_000, help="calls per measurement (default 100000)")
    parser.add_argument("--rate", type=float, default=2_000.0, help="events/s of the paced pattern (default 2000)")
    parser.add_argument("--spool", action="store_true",
                        help="give the publisher a disk spool (a temp directory): its sender then writes every record "
                        "to disk before producing, competing with the agent's thread for the GIL meanwhile")
    parser.add_argument("--topic", default=None, help="topic to publish to (default: a new one, deleted after)")
    parser.add_argument("--gil-slice", type=int, default=None,
                        help="EventPublisher(gil_slice_events=...): the sender releases the GIL after every N events "
                        "it drains (0: never; default: the publisher's default)")
    parser.add_argument("--replay", choices=("bridge", "setup"), default=None,
                        help="no Kafka: only the bridge's on_event over the event mix, into a deque (no sender), for "
                        "instruction counts under valgrind; 'setup' builds the events only (subtract it)")
    args = parser.parse_args()
    if args.replay is not None:
        return replay(args.replay, args.events)

    from confluent_kafka.admin import AdminClient

    from agentwatch.topics import TopicSpec, ensure_topics

    print(f"python {platform.python_version()}  confluent-kafka {confluent_kafka.__version__}  "
          f"librdkafka {confluent_kafka.libversion()[0]}  fastavro {fastavro.__version__}  "
          f"prometheus_client {importlib.metadata.version('prometheus_client')}  "
          f"switchinterval {sys.getswitchinterval() * 1e3:.1f} ms  cpus {os.cpu_count()}")
    topic = args.topic or f"bench-on-event-{uuid.uuid4().hex[:8]}"
    if args.topic is None:
        ensure_topics(args.bootstrap, [TopicSpec(topic, 6, 3_600_000)])
    n = args.events
    data = agentao_like_events(n)
    results: dict[str, dict[str, float]] = {}

    # -- baseline: logging JSON lines to a file, the seed's on_event ------------------------------------------
    tmp = tempfile.mkdtemp(prefix="bench-on-event-")
    logger = logging.getLogger(f"bench.seed.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.FileHandler(Path(tmp) / "agent.log")
    handler.setFormatter(JsonLineFormatter())
    logger.addHandler(handler)

    def seed_on_event(i: int) -> None:
        etype, payload = data[i]
        logger.info("agent_event", extra={"event_type": etype, "session_id": f"s{i % 50}", "tenant_id": "acme",
                                          "user_id": "u1", **payload})

    # -- agentwatch: stamp + publish ------------------------------------------------------------------------------
    stamper = Stamper(tenant="acme", service="bench")
    spool_tmp = tempfile.TemporaryDirectory() if args.spool else None
    slice_kw = {} if args.gil_slice is None else {"gil_slice_events": args.gil_slice}
    publisher = EventPublisher(args.bootstrap, topic, buffer_max_events=max(100_000, 2 * n),
                               spool_dir=Path(spool_tmp.name) / "spool" if spool_tmp is not None else None,
                               **slice_kw)
    print(f"publisher spool: {'on (disk buffer)' if spool_tmp is not None else 'off'}; gil_slice_events "
          f"{getattr(publisher, '_gil_slice', 'n/a')}")

    def typed(etype: str, payload: dict[str, Any]) -> dict[str, Any]:
        fields = {k: payload[k] for k in ("status", "duration_ms", "prompt_tokens", "completion_tokens",
                                          "cache_read_tokens", "cache_creation_tokens", "reasoning_tokens",
                                          "finish_reason") if k in payload}
        if "tool" in payload:
            fields["tool_name"] = payload["tool"]
        if "call_id" in payload:
            fields["call_id"] = payload["call_id"]
        fields["payload"] = {k: v for k, v in payload.items() if k not in fields and k not in ("tool",)}
        return fields

    prepared = [(etype, typed(etype, payload)) for etype, payload in data]

    def agentwatch_on_event(i: int) -> None:
        etype, fields = prepared[i]
        publisher.publish(stamper.stamp(etype, fields, session_id=f"s{i % 50}"))

    def capture_on_event(i: int) -> None:  # the agent thread's share only: the sender completes the stamp
        etype, fields = prepared[i]
        publisher.publish(stamper.capture(etype, fields, session_id=f"s{i % 50}"))

    # -- the Agentao bridge (mapping + stamp + publish), when it is there ---------------------------------------
    bridge_calls: dict[str, Callable[[int], None]] = {}
    try:
        from agentao.transport import AgentEvent, EventType

        from producers.agentao_bridge import AgentaoBridge

        agentao_events = [AgentEvent(EventType(etype), dict(payload)) for etype, payload in data]
        for label, bridge_stamper, defer in (
                ("bridge on_event (default)", None, None),
                ("bridge on_event, mapped inline", None, False),
                ("bridge inline, deferred stamp", DeferredStamper(tenant="acme"), False)):
            bridge = AgentaoBridge(publisher, tenant="acme", session_id="bench-session", stamper=bridge_stamper,
                                   defer_mapping=defer)
            bridge_calls[label] = lambda i, b=bridge: b.on_event(agentao_events[i])
        from producers.mapping import fields_from_agentao

        # the bridge's mapping alone (what on_event does before the stamp), to show what is left on the agent's
        # thread once the stamp is deferred
        bridge_calls["bridge mapping alone"] = lambda i: fields_from_agentao(
            agentao_events[i].type.value, agentao_events[i].data, None, defer=True)
    except Exception as exc:  # another module's API may move; the measurements above still stand
        print(f"(bridge not measured: {type(exc).__name__}: {exc})")

    patterns: list[tuple[str, float | None]] = [("burst", None), ("paced", args.rate)]
    for pattern, rate in patterns:
        count = n if rate is None else min(n, int(rate * 10))  # paced runs are capped at ~10 s
        measure(seed_on_event, min(count, 5_000), rate)  # warm-up
        results[f"logging JSON line to a file ({pattern})"] = summary(measure(seed_on_event, count, rate))
        calls = {"stamp + publish": agentwatch_on_event, "capture + publish": capture_on_event, **bridge_calls}
        for label, call in calls.items():
            measure(call, min(count, 5_000), rate)
            results[f"{label} ({pattern})"] = summary(measure(call, count, rate))
            publisher.flush(60)

    flushed = publisher.flush(60)
    publisher.close(30)
    if spool_tmp is not None:
        spool_tmp.cleanup()
    stats = publisher.stats
    handler.close()

    print(f"\non_event cost per call, µs ({n} burst calls; paced at {args.rate:.0f}/s for up to 10 s)")
    print(f"{'what':44s} {'p50':>8s} {'p99':>8s} {'p99.9':>8s} {'mean':>8s} {'cpu':>7s} {'wake p99':>9s}"
          f"   p50/p99 vs logging")
    for name, r in results.items():
        pattern = name[name.rindex("(") + 1:-1]
        base = results[f"logging JSON line to a file ({pattern})"]
        ratio = f"{r['p50'] / base['p50']:.2f}x / {r['p99'] / base['p99']:.2f}x"
        print(f"{name:44s} {r['p50']:8.2f} {r['p99']:8.2f} {r['p99.9']:8.2f} {r['mean']:8.2f} {r['cpu']:7.2f}"
              f" {r['wake99']:9.1f}   {ratio}")
    print("(cpu: the calling thread's CPU time per call, sleeps excluded; it does not count waiting for the GIL)")
    print("(wake p99: paced calls only, how late the thread ran after its sleep: waiting for the GIL while the "
          "sender drains, and the OS scheduler; not part of the call's latency, which starts after)")
    print("(capture + publish: Stamper.capture, the sender completes the stamp; 'bridge on_event (default)': the "
          "mapping of scalar-only events deferred to the sender too; 'mapped inline': defer_mapping=False; "
          "'deferred stamp': mapped inline, stamper=DeferredStamper(...))")
    print(f"\ngoal (issue 13): paced p50 <= 10 µs, p99 <= 50 µs.  publisher: flushed={flushed} "
          f"delivered={stats['delivered']} "
          f"enqueued={stats['enqueued']} dropped={stats['dropped']} batches={stats['batches']}")
    if args.topic is None:
        AdminClient({"bootstrap.servers": args.bootstrap}).delete_topics([topic])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
