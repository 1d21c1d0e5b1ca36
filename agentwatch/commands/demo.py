"""``agentwatch demo``: the whole pipeline end to end on this machine, with a visible result.

Every part runs as the process an operator would run (``agentwatch worker``, ``agentwatch exporter``, ``agentwatch
alerts deliver``, ``agentwatch replay run``, ``agentwatch audit run``, then ``agentwatch simulate``), against the broker
in ``KAFKA_BOOTSTRAP_SERVERS`` or, when that is unset, a throw-away local Apache Kafka started for the demo. Topic
names and the streams app id get a per-run suffix so a demo never mixes with earlier data. The simulated history ends
"now", so the worker's wall-clock heartbeat closes the last windows the way it would for a fleet that went quiet.
At the end the demo prints what each part produced and checks the alerts against the simulator's ground truth.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from agentwatch.broker.launcher import free_ports
from agentwatch.config import Settings, TopicNames
from agentwatch.topics import default_topics, ensure_topics

WINDOW_S = 60


def _say(msg: str) -> None:
    print(f"\n== {msg}", file=sys.stderr, flush=True)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "agentwatch", *args]


@contextmanager
def _broker(settings: Settings) -> Iterator[str]:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        _say(f"using the Kafka broker at {settings.bootstrap_servers}")
        yield settings.bootstrap_servers
        return
    from agentwatch.broker.launcher import LocalKafka

    _say("starting a local Apache Kafka broker (the first run resolves its jars from Maven Central)")
    with LocalKafka(settings.home, progress=lambda m: print(f"   {m}", file=sys.stderr, flush=True)) as kafka:
        print(f"   broker up at {kafka.bootstrap_servers} (Kafka {kafka.kafka_version})", file=sys.stderr)
        yield kafka.bootstrap_servers
    _say("local broker stopped")


class _Services:
    """The long-running parts, each a subprocess with its output in ``<workdir>/logs/<name>.log``."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = env
        self.procs: dict[str, tuple[subprocess.Popen[bytes], IO[bytes]]] = {}

    def start(self, name: str, *args: str) -> None:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        proc = subprocess.Popen(_cli(*args), env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs[name] = (proc, log)
        print(f"   {name:<8} pid {proc.pid}: agentwatch {' '.join(args)}", file=sys.stderr)

    def check_alive(self) -> None:
        for name, (proc, _) in self.procs.items():
            if proc.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")

    def stop(self) -> None:
        for proc, _ in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc, log in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def _group_lag(bootstrap: str, group: str, topic: str) -> int | None:
    """Records of ``topic`` that ``group`` has not committed yet (None while the group has no offsets)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        tps = [TopicPartition(topic, p) for p in md.partitions]
        committed = c.committed(tps, timeout=10)
        lag = 0
        for tp in committed:
            high = c.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)[1]
            if tp.offset < 0:
                if high > 0:
                    return None
                continue
            lag += max(0, high - tp.offset)
        return lag
    finally:
        c.close()


def _read_topic(bootstrap: str, topic: str) -> list[Any]:
    """Every record of ``topic`` from the beginning to its current end (small topics: metrics, alerts)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"agentwatch-demo-read-{uuid.uuid4().hex[:6]}",
                  "enable.auto.commit": False})
    out = []
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in md.partitions}
        c.assign([TopicPartition(topic, p, 0) for p, end in ends.items() if end > 0])
        remaining = {p for p, end in ends.items() if end > 0}
        deadline = time.monotonic() + 30
        while remaining and time.monotonic() < deadline:
            for msg in c.consume(500, timeout=0.5):
                if msg.error():
                    continue
                out.append(msg)
                if msg.offset() + 1 >= ends[msg.partition()]:
                    remaining.discard(msg.partition())
    finally:
        c.close()
    return out


def _wait(what: str, done: Any, services: _Services, timeout_s: float) -> bool:
    """Poll ``done()`` (True, or a short status text) once a second; progress in place on a terminal."""
    tty = sys.stderr.isatty()
    start = time.monotonic()
    last_line = 0.0
    while time.monotonic() - start < timeout_s:
        services.check_alive()
        state = done()
        elapsed = time.monotonic() - start
        if state is True:
            print(f"{chr(13) if tty else ''}   {what}: done in {elapsed:.0f}s{' ' * 30}", file=sys.stderr)
            return True
        if tty:
            print(f"\r   {what}: {state} ({elapsed:.0f}s)   ", end="", file=sys.stderr, flush=True)
        elif elapsed - last_line >= 10:
            last_line = elapsed
            print(f"   {what}: {state} ({elapsed:.0f}s)", file=sys.stderr, flush=True)
        time.sleep(1.0)
    print(f"{chr(13) if tty else ''}   {what}: not done after {timeout_s:.0f}s", file=sys.stderr)
    return False


def run(args: argparse.Namespace, settings: Settings) -> int:
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]
    workdir = Path(args.workdir or settings.home / "demo" / run_id).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    base = f"agentwatch.demo-{run_id}"
    topics = TopicNames(events=f"{base}.events", dead_letter=f"{base}.events.dlq", metrics=f"{base}.metrics",
                        alerts=f"{base}.alerts", partials=f"{base}.events.partials",
                        late=f"{base}.events.late")
    duration_s = args.minutes * 60
    start = datetime.fromtimestamp((time.time() // WINDOW_S) * WINDOW_S - duration_s, tz=UTC)

    with ExitStack() as stack:
        bootstrap = stack.enter_context(_broker(settings))
        settings = settings.with_(bootstrap_servers=bootstrap, topics=topics, events_partitions=args.partitions,
                                  app_id=f"{base}.streams")
        hmac_key = secrets.token_hex(32)
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "AGENTWATCH_TOPIC_PREFIX": base,
               "AGENTWATCH_EVENTS_TOPIC": topics.events, "AGENTWATCH_DLQ_TOPIC": topics.dead_letter,
               "AGENTWATCH_METRICS_TOPIC": topics.metrics, "AGENTWATCH_ALERTS_TOPIC": topics.alerts,
               "AGENTWATCH_PARTIALS_TOPIC": topics.partials, "AGENTWATCH_LATE_TOPIC": topics.late,
               "AGENTWATCH_APP_ID": settings.app_id,
               "AGENTWATCH_EVENTS_PARTITIONS": str(args.partitions), "AGENTWATCH_HOME": str(settings.home),
               "AGENTWATCH_AUDIT_DIR": str(workdir / "audit"), "AGENTWATCH_AUDIT_HMAC_KEY": hmac_key,
               "AGENTWATCH_AUDIT_ENC_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
               "AGENTWATCH_REPLAY_DIR": str(workdir / "replay"), "PYTHONUNBUFFERED": "1"}

        _say("creating topics")
        for name, status in ensure_topics(bootstrap, default_topics(settings), settings.replication_factor).items():
            print(f"   {name}: {status}", file=sys.stderr)

        _say("starting the pipeline")
        services = _Services(workdir, env)
        stack.callback(services.stop)
        (metrics_port,) = free_ports(1)
        alerts_file = workdir / "alerts.jsonl"
        services.start("worker", "worker", "--window", str(WINDOW_S))
        services.start("exporter", "exporter", "--port", str(metrics_port), "--addr", "127.0.0.1")
        services.start("alerts", "alerts", "deliver", "--jsonl", str(alerts_file), "--from", "earliest")
        services.start("replay", "replay", "run")
        services.start("audit", "audit", "run", "--business-tools", "write_file,replace")

        _say(f"simulating {args.tenants} tenants, {args.minutes} minutes of traffic ending now, with incidents")
        truth_path = workdir / "truth.json"
        sim = subprocess.run(_cli("simulate", "--tenants", str(args.tenants), "--duration", f"{duration_s}s",
                                  "--seed", str(args.seed), "--start", start.isoformat(), "--truth", str(truth_path),
                                  "--window", str(WINDOW_S)), env=env, stdin=subprocess.DEVNULL)
        if sim.returncode != 0:
            print(f"demo: simulate failed (exit {sim.returncode})", file=sys.stderr)
            return sim.returncode
        truth = json.loads(truth_path.read_text())

        _say("waiting for every part to catch up")
        for name, group in (("worker", settings.app_id), ("exporter", "agentwatch-exporter"),
                            ("replay", "agentwatch-replay"), ("audit", "agentwatch-audit")):
            history: list[int] = []

            def caught_up(group: str = group, history: list[int] = history) -> bool | str:
                lag = _group_lag(bootstrap, group, topics.events)
                if lag is None:
                    return "starting"
                history.append(lag)
                # The archive commits only past rows it has written: a session still open at the end may hold
                # its last records (pending thinking text) uncommitted, so a steady small lag is caught up too.
                if lag == 0 or (len(history) >= 5 and len(set(history[-5:])) == 1):
                    return True
                return f"{lag:,} records behind"
            _wait(f"{name} consumed the events", caught_up, services, args.timeout)
        true_turns = sum(t["turns"] for t in truth["tenants"].values())

        def windows_closed() -> bool | str:
            turns = sum(t["turns"] for t in _tenant_totals(bootstrap, topics.metrics).values())
            return True if turns >= true_turns else f"{turns:,}/{true_turns:,} turns in closed windows"
        _wait("the last windows closed (the worker's heartbeat closes them after the grace period)",
              windows_closed, services, args.timeout)
        expected = {_alert_id(a["alertname"], a["labels"]) for a in truth["alerts"]["expected"]}

        def alerts_in() -> bool | str:
            seen = {k for k, status in _alert_states(alerts_file).items() if status == "resolved"}
            return True if expected <= seen else f"{len(seen & expected)}/{len(expected)} incidents resolved"
        _wait("alerts of every incident fired and resolved", alerts_in, services, args.timeout)

        print(_report(bootstrap, topics, truth, alerts_file, metrics_port, workdir, env))
        _say(f"done: logs and outputs in {workdir}")
    return 0


def _alert_id(alertname: str, labels: dict[str, str]) -> str:
    extra = ",".join(f"{k}={labels[k]}" for k in sorted(labels) if k not in ("alertname", "severity"))
    return f"{alertname}{{{extra}}}"


def _alert_states(path: Path) -> dict[str, str]:
    """Last status per alert from the JSONL receiver (one line per webhook notification)."""
    states: dict[str, str] = {}
    if not path.exists():
        return states
    for line in path.read_text().splitlines():
        try:
            note = json.loads(line)
        except ValueError:
            continue
        for alert in note.get("payload", note).get("alerts", []):
            states[_alert_id(alert["labels"]["alertname"], alert["labels"])] = alert["status"]
    return states


def _tenant_totals(bootstrap: str, topic: str) -> dict[str, dict[str, float]]:
    """Per tenant sums over the newest revision of each 1-minute window of the metrics topic (late data makes a
    window come again as a higher revision on the same key; the newest is the answer, as compaction keeps it)."""
    from streams.metrics_codec import MetricsCodec

    codec = MetricsCodec()
    newest: dict[tuple[str, int], dict[str, Any]] = {}
    for msg in _read_topic(bootstrap, topic):
        rec = codec.decode(msg.value())
        if rec["window_end_us"] - rec["window_start_us"] != WINDOW_S * 1_000_000:
            continue
        key = (rec["tenant"], rec["window_start_us"])
        if key not in newest or rec["revision"] >= newest[key]["revision"]:
            newest[key] = rec
    per_tenant: dict[str, dict[str, float]] = {}
    for rec in newest.values():
        t = per_tenant.setdefault(rec["tenant"], dict.fromkeys(
            ("windows", "turns", "tool_calls", "tool_failures", "tokens", "cached", "prompt"), 0))
        t["windows"] += 1
        t["turns"] += rec.get("turns") or 0
        t["tool_calls"] += rec.get("tool_calls") or 0
        t["tool_failures"] += rec.get("tool_failures") or 0
        t["prompt"] += rec.get("prompt_tokens") or 0
        t["cached"] += rec.get("cache_read_tokens") or 0
        t["tokens"] += (rec.get("prompt_tokens") or 0) + (rec.get("completion_tokens") or 0)
    return per_tenant


def _report(bootstrap: str, topics: TopicNames, truth: dict[str, Any], alerts_file: Path, metrics_port: int,
            workdir: Path, env: dict[str, str]) -> str:
    lines = ["", "━━━ agentwatch demo: what the pipeline produced ━━━", ""]
    per_tenant = _tenant_totals(bootstrap, topics.metrics)
    lines.append("windowed metrics (metrics topic, 1-minute windows), against the simulator's ground truth:")
    lines.append(f"  {'tenant':<12} {'windows':>7} {'turns':>7} {'tool calls':>10} {'fail %':>7} "
                 f"{'tokens':>13} {'cache hit %':>11}  truth")
    for tenant, t in sorted(per_tenant.items()):
        true = truth["tenants"].get(tenant, {})
        ok = true.get("turns") == t["turns"] and true.get("tool_calls") == t["tool_calls"]
        lines.append(f"  {tenant:<12} {t['windows']:>7.0f} {t['turns']:>7,.0f} {t['tool_calls']:>10,.0f} "
                     f"{100 * t['tool_failures'] / max(t['tool_calls'], 1):>7.1f} {t['tokens']:>13,.0f} "
                     f"{100 * t['cached'] / max(t['prompt'], 1):>11.1f}  {'✓ equal' if ok else '✗ differs'}")
    # Alerts, from what the delivery sink wrote.
    lines.append("")
    lines.append("alerts delivered (alert delivery sink, JSONL receiver), against the scripted incidents:")
    states = _alert_states(alerts_file)
    expected = {_alert_id(a["alertname"], a["labels"]) for a in truth["alerts"]["expected"]}
    for key in sorted(expected | set(states)):
        mark = "✓" if key in expected and states.get(key) == "resolved" else ("✗ unexpected" if key not in expected
                                                                               else "… " + states.get(key, "missing"))
        lines.append(f"  {mark:<3} {key}: {states.get(key, 'not delivered')}")
    # Prometheus endpoint.
    lines.append("")
    lines.append(f"Prometheus endpoint http://127.0.0.1:{metrics_port}/metrics (a few series):")
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        wanted = ("agent_turns_total{", "agent_max_iterations_hits_total{", "agent_confirm_requests_total{")
        shown = [ln for ln in text.splitlines() if ln.startswith(wanted)][:6]
        lines.extend(f"  {ln}" for ln in shown)
    except OSError as exc:
        lines.append(f"  (not reachable: {exc})")
    # Archive and audit, through their own commands.
    for title, cmd in (("session replay archive (agentwatch replay list, first lines):", ("replay", "list")),
                       ("audit log (agentwatch audit verify):", ("audit", "verify", "--quiet"))):
        lines.append("")
        lines.append(title)
        out = subprocess.run(_cli(*cmd), env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        lines.extend(f"  {ln}" for ln in (out.stdout + out.stderr).strip().splitlines()[:8])
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "demo",
        help="run the whole pipeline end to end on a local Kafka with simulated agents and show the result",
        description="Start a local Apache Kafka (unless KAFKA_BOOTSTRAP_SERVERS is set), create the topics, start "
        "a streams worker, the Prometheus exporter, alert delivery, the replay archive and the audit log, publish a "
        "simulated multi-tenant fleet with scripted incidents, wait until every part has caught up, and print what "
        "each produced, checked against the simulator's ground truth. Outputs and logs stay in the work directory.",
    )
    p.add_argument("--tenants", type=int, default=4, help="simulated tenants (default 4)")
    p.add_argument("--minutes", type=int, default=12, help="minutes of simulated traffic (default 12)")
    p.add_argument("--seed", type=int, default=7, help="simulator seed (default 7)")
    p.add_argument("--partitions", type=int, default=3, help="partitions of the events topic (default 3)")
    p.add_argument("--timeout", type=float, default=180, help="seconds to wait for each part to catch up")
    p.add_argument("--workdir", help="where the demo writes its outputs and logs (default $AGENTWATCH_HOME/demo/<run>)")
    p.set_defaults(func=run)
