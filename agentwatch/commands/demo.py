"""``agentwatch demo``: the whole pipeline end to end on this machine, with a visible result.

Every part runs as the process an operator would run (``agentwatch worker``, ``agentwatch exporter``, ``agentwatch
alerts deliver``, ``agentwatch replay run``, ``agentwatch audit run``, then ``agentwatch simulate``), against the broker
in ``KAFKA_BOOTSTRAP_SERVERS`` or, when that is unset, a throw-away local Apache Kafka started for the demo. Topic
names and the streams app id get a per-run suffix so a demo never mixes with earlier data. The simulated history ends
"now", so the worker's wall-clock heartbeat closes the last windows the way it would for a fleet that went quiet.
With an OTLP endpoint configured (``--otlp-endpoint``, ``--traces``, or ``OTEL_EXPORTER_OTLP_ENDPOINT``) ``agentwatch
traces run`` is one more part. The demo waits by polling (committed offsets against end offsets, closed windows,
resolved alerts), never for a fixed time; then it stops every part cleanly (which seals the audit log), checks each
part's output against the simulator's ground truth (windows, alerts, replay archive, audit log, traces), prints ✓ or
✗ per check (exit 1 on any ✗) and writes ``report.html`` (:mod:`agentwatch.demo_report`) next to its outputs.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from agentwatch.broker.launcher import free_ports
from agentwatch.config import DEFAULT_OTLP_TRACES_ENDPOINT, Settings, TopicNames
from agentwatch.demo_report import Check, ReplayLink, build_report_data, newest_windows, render_report
from agentwatch.topics import default_topics, ensure_topics
from sinks.archive import tenant_from_dirname
from sinks.archive_store import iter_files

WINDOW_S = 60


def _say(msg: str) -> None:
    print(f"\n== {msg}", file=sys.stderr, flush=True)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "agentwatch", *args]


@contextmanager
def _broker(settings: Settings) -> Iterator[str]:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        from agentwatch.startup import wait_for_kafka

        _say(f"using the Kafka broker at {settings.bootstrap_servers}")
        wait_for_kafka(settings.bootstrap_servers, settings.kafka_startup_timeout_s)
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

    def stop(self) -> dict[str, int | None]:
        """SIGTERM to every part, then wait (20 s, then SIGKILL); each part's exit code. Safe to call twice."""
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
        return {name: proc.returncode for name, (proc, _) in self.procs.items()}


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
            print(f"\r   {what}: done in {elapsed:.0f}s{' ' * 30}" if tty else f"   {what}: done in {elapsed:.0f}s",
                  file=sys.stderr)
            return True
        if tty:
            print(f"\r   {what}: {state} ({elapsed:.0f}s)   ", end="", file=sys.stderr, flush=True)
        elif elapsed - last_line >= 10:
            last_line = elapsed
            print(f"   {what}: {state} ({elapsed:.0f}s)", file=sys.stderr, flush=True)
        time.sleep(1.0)
    print(f"{chr(13) if tty else ''}   {what}: not done after {timeout_s:.0f}s", file=sys.stderr)
    return False


def _traces_endpoint(args: argparse.Namespace, settings: Settings) -> str | None:
    """Where the demo's spans go: ``--otlp-endpoint``, else the OTLP variables when they name a backend (or with
    ``--traces``, their default); None: no traces part."""
    if args.otlp_endpoint:
        return str(args.otlp_endpoint)
    if args.traces or settings.traces.endpoint != DEFAULT_OTLP_TRACES_ENDPOINT:
        return settings.traces.endpoint
    return None


def _unreachable(url: str, timeout_s: float = 3.0) -> str | None:
    """Why nothing answers at the URL's host and port (a TCP connect), or None when something does."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "localhost", port), timeout=timeout_s).close()
    except OSError as exc:
        return f"nothing answers at {parts.hostname}:{port} ({exc.strerror or exc})"
    return None


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
    traces_endpoint = _traces_endpoint(args, settings)
    traces_down = _unreachable(traces_endpoint) if traces_endpoint else None
    if traces_down:  # fail that part now, clearly, rather than after the sink's export retries
        print(f"demo: the OTLP endpoint {traces_endpoint}: {traces_down}; the demo runs without traces (✗)",
              file=sys.stderr)

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
        groups = [("worker", settings.app_id), ("exporter", "agentwatch-exporter"), ("replay", "agentwatch-replay"),
                  ("audit", "agentwatch-audit")]
        if traces_endpoint and not traces_down:
            # A turn's spans leave once the turn ends (or times out); the settle time is short because the demo's
            # events arrive in order, so the last turns are out before the demo stops.
            services.start("traces", "traces", "run", "--endpoint", traces_endpoint, "--settle", "2")
            groups.append(("traces", "agentwatch-traces"))

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
        caught: dict[str, bool] = {}
        for name, group in groups:
            caught[name] = _wait(f"{name} consumed the events", _caught_up(bootstrap, group, topics.events),
                                 services, args.timeout)
        true_turns = sum(t["turns"] for t in truth["tenants"].values())

        def windows_closed() -> bool | str:
            newest = newest_windows(_metrics_records(bootstrap, topics.metrics), WINDOW_S)
            turns = sum(rec.get("turns") or 0 for rec in newest.values())
            return True if turns >= true_turns else f"{turns:,}/{true_turns:,} turns in closed windows"
        _wait("the last windows closed (the worker's heartbeat closes them after the grace period)",
              windows_closed, services, args.timeout)
        expected = {_alert_id(a["alertname"], a["labels"]) for a in truth["alerts"]["expected"]}

        def alerts_in() -> bool | str:
            seen = {k for k, status in _alert_states(alerts_file).items() if status == "resolved"}
            return True if expected <= seen else f"{len(seen & expected)}/{len(expected)} incidents resolved"
        _wait("alerts of every incident fired and resolved", alerts_in, services, args.timeout)

        # What the running parts show; then a clean stop, which seals the audit log and flushes the archive, and
        # only then the checks of what is on disk.
        records = _metrics_records(bootstrap, topics.metrics)
        series = _scrape(metrics_port)
        _say("stopping the pipeline (a clean stop seals the audit log)")
        codes = services.stop()
        print("   " + ", ".join(f"{name} exit {code}" for name, code in codes.items()), file=sys.stderr)
        checks, text = _outcome(truth, records, alerts_file, workdir, env, codes, caught)
        if traces_down:
            checks.append(Check("traces", False, f"not sent: the OTLP endpoint {traces_endpoint}: {traces_down}"))
            text += ["", "traces (agentwatch traces run, OTLP/HTTP):",
                     f"  ✗   not sent: {traces_endpoint}: {traces_down}"]
        report_path = workdir / "report.html"
        data = build_report_data(
            records=records, truth=truth, notifications=_notifications(alerts_file),
            replays=_replay_links(workdir), checks=checks, title=f"agentwatch demo {run_id}",
            generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
            notes=[f"traces sent to {traces_endpoint}" if traces_endpoint and not traces_down else
                   "traces: not sent (set OTEL_EXPORTER_OTLP_ENDPOINT or pass --otlp-endpoint to send them)"])
        report_path.write_text(render_report(data), encoding="utf-8")
        print("\n".join([*text, "", f"Prometheus endpoint http://127.0.0.1:{metrics_port}/metrics (a few series):",
                         *(f"  {ln}" for ln in series), "", f"report: {report_path}"]))
        _say(f"done: logs and outputs in {workdir}")
    return 0 if all(c.ok for c in checks) else 1


def _caught_up(bootstrap: str, group: str, topic: str) -> Any:
    """A poll for ``_wait``: the group's committed offsets reached the topic's end offsets. The archive and the
    trace sink commit only past what they have written: a session (or turn) still open at the end holds its last
    records uncommitted, so a lag that stays the same for five polls is caught up too."""
    history: list[int] = []

    def poll() -> bool | str:
        lag = _group_lag(bootstrap, group, topic)
        if lag is None:
            return "starting"
        history.append(lag)
        if lag == 0 or (len(history) >= 5 and len(set(history[-5:])) == 1):
            return True
        return f"{lag:,} records behind"
    return poll


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


def _metrics_records(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Every WindowedMetrics record on the metrics topic, decoded."""
    from streams.metrics_codec import MetricsCodec

    codec = MetricsCodec()
    return [codec.decode(msg.value()) for msg in _read_topic(bootstrap, topic)]


def _scrape(port: int) -> list[str]:
    """A few series of the exporter's ``/metrics`` (the exporter is still running)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError as exc:
        return [f"(not reachable: {exc})"]
    wanted = ("agent_turns_total{", "agent_max_iterations_hits_total{", "agent_confirm_requests_total{")
    return [ln for ln in text.splitlines() if ln.startswith(wanted)][:6]


def _notifications(path: Path) -> list[dict[str, Any]]:
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def _replay_sessions(workdir: Path) -> dict[str, set[str]]:
    """Archived session ids per tenant."""
    per_tenant: dict[str, set[str]] = {}
    for f in iter_files(workdir / "replay"):
        per_tenant.setdefault(tenant_from_dirname(f.tenant_dir) or f.tenant_dir, set()).add(f.session_id)
    return per_tenant


def _replay_links(workdir: Path) -> list[ReplayLink]:
    return [ReplayLink(tenant_from_dirname(f.tenant_dir) or f.tenant_dir, f"{f.session_id}.{f.instance_id}",
                       os.path.relpath(f.path, workdir))
            for f in sorted(iter_files(workdir / "replay"), key=lambda f: (f.tenant_dir, f.session_id))]


def _outcome(truth: dict[str, Any], records: list[dict[str, Any]], alerts_file: Path, workdir: Path,
             env: dict[str, str], codes: dict[str, int | None],
             caught: dict[str, bool]) -> tuple[list[Check], list[str]]:
    """Each part's output against the ground truth: the checks (for the report and the exit code) and the text."""
    checks: list[Check] = []
    lines = ["", "━━━ agentwatch demo: what the pipeline produced ━━━", ""]
    lines.append("windowed metrics (metrics topic, 1-minute windows, newest revision), against the simulator's "
                 "ground truth:")
    lines.append(f"  {'tenant':<12} {'windows':>7} {'turns':>7} {'tool calls':>10} {'fail %':>7} "
                 f"{'tokens':>13} {'cache hit %':>11} {'cost USD':>10}  truth")
    per_tenant = _tenant_totals(newest_windows(records, WINDOW_S).values())
    for tenant in sorted(set(per_tenant) | set(truth["tenants"])):
        t, true = per_tenant.get(tenant, dict.fromkeys(_TOTALS, 0)), truth["tenants"].get(tenant, {})
        ok = (true.get("turns") == t["turns"] and true.get("tool_calls") == t["tool_calls"]
              and true.get("tokens", {}).get("total") == t["tokens"] and true.get("cost_nusd") == t["cost_nusd"])
        checks.append(Check(f"windows {tenant}", ok, f"{t['turns']:,.0f} turns, {t['tool_calls']:,.0f} tool calls, "
                            f"{t['tokens']:,.0f} tokens, ${t['cost_nusd'] / 1e9:,.4f}"
                            + ("" if ok else f"; truth {true.get('turns')} turns, {true.get('tool_calls')} tool "
                               f"calls, {true.get('tokens', {}).get('total')} tokens, "
                               f"{true.get('cost_nusd')} nano-USD")))
        lines.append(f"  {tenant:<12} {t['windows']:>7.0f} {t['turns']:>7,.0f} {t['tool_calls']:>10,.0f} "
                     f"{100 * t['tool_failures'] / max(t['tool_calls'], 1):>7.1f} {t['tokens']:>13,.0f} "
                     f"{100 * t['cached'] / max(t['prompt'], 1):>11.1f} {t['cost_nusd'] / 1e9:>10,.4f}  "
                     f"{'✓ equal' if ok else '✗ differs'}")

    lines += ["", "alerts delivered (alert delivery sink, JSONL receiver), against the scripted incidents:"]
    states = _alert_states(alerts_file)
    expected = {_alert_id(a["alertname"], a["labels"]) for a in truth["alerts"]["expected"]}
    for key in sorted(expected | set(states)):
        ok = key in expected and states.get(key) == "resolved"
        mark = "✓" if ok else ("✗ unexpected" if key not in expected else "✗ " + states.get(key, "missing"))
        checks.append(Check(f"alert {key}", ok, states.get(key, "not delivered")
                            + ("" if key in expected else " (no scripted incident explains it)")))
        lines.append(f"  {mark:<3} {key}: {states.get(key, 'not delivered')}")

    lines += ["", "session replay archive (sessions archived per tenant, against the sessions the simulator started):"]
    archived = _replay_sessions(workdir)
    for tenant, true in sorted(truth["tenants"].items()):
        n, want = len(archived.get(tenant, ())), true.get("events_by_type", {}).get("session_start", 0)
        ok = n == want and caught.get("replay", False)
        checks.append(Check(f"replay {tenant}", ok, f"{n:,} sessions archived, {want:,} started"))
        lines.append(f"  {'✓' if ok else '✗'}   {tenant}: {n:,} sessions archived, {want:,} started")

    lines += ["", "audit log (agentwatch audit verify, after the clean stop that sealed it):"]
    out = subprocess.run(_cli("audit", "verify", "--quiet"), env=env, capture_output=True, text=True,
                         stdin=subprocess.DEVNULL)
    shown = (out.stdout + out.stderr).strip().splitlines()
    warnings = [ln for ln in shown if "warning" in ln]
    ok = out.returncode == 0 and not warnings and codes.get("audit") == 0
    detail = (shown[0] if shown else f"exit {out.returncode}") + (f"; {len(warnings)} warning(s)" if warnings else "")
    if codes.get("audit") != 0:
        detail += f"; the audit writer exited {codes.get('audit')} (not sealed)"
    checks.append(Check("audit log", ok, detail))
    lines.append(f"  {'✓' if ok else '✗'}   {detail}")
    lines.extend(f"      {ln}" for ln in warnings[:5])

    if "traces" in codes:
        log = (workdir / "logs" / "traces.log").read_text(errors="replace").replace("\r", "\n").splitlines()
        summary = [ln.strip() for ln in log if ln.startswith("traces:")][-1:]  # its error, if it stopped on one
        for mark in (" spans exported", " -> "):  # its closing counts: records and spans, then turns
            summary += [ln.strip().split("; ")[0] for ln in log if mark in ln][-1:]
        # The sink's closing lines say how many turns it assembled (every ended turn of the truth, no more); exit 0
        # after a clean stop means all of them were exported (a refused export stops it with exit 1).
        exported = re.search(r"-> ([\d,]+) turns", " ".join(summary))
        turns = int(exported.group(1).replace(",", "")) if exported else None
        true_turns = sum(t["turns"] for t in truth["tenants"].values())
        ok = codes["traces"] == 0 and caught.get("traces", False) and turns == true_turns
        got = f"{turns:,}" if turns is not None else "?"
        detail = f"exit {codes['traces']}, {got} of {true_turns:,} turns exported: " + "; ".join(summary)
        checks.append(Check("traces", ok, detail))
        lines += ["", "traces (agentwatch traces run, OTLP/HTTP):", f"  {'✓' if ok else '✗'}   {detail}"]
    return checks, lines


_TOTALS = ("windows", "turns", "tool_calls", "tool_failures", "tokens", "cached", "prompt", "cost_nusd")


def _tenant_totals(records: Any) -> dict[str, dict[str, float]]:
    """Per tenant sums over the given window records (the newest revision of each window)."""
    per_tenant: dict[str, dict[str, float]] = {}
    for rec in records:
        t = per_tenant.setdefault(rec["tenant"], dict.fromkeys(_TOTALS, 0))
        t["windows"] += 1
        t["turns"] += rec.get("turns") or 0
        t["tool_calls"] += rec.get("tool_calls") or 0
        t["tool_failures"] += rec.get("tool_failures") or 0
        t["prompt"] += rec.get("prompt_tokens") or 0
        t["cached"] += rec.get("cache_read_tokens") or 0
        t["tokens"] += (rec.get("prompt_tokens") or 0) + (rec.get("completion_tokens") or 0)
        t["cost_nusd"] += rec.get("cost_nusd") or 0
    return per_tenant


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "demo",
        help="run the whole pipeline end to end on a local Kafka with simulated agents and show the result",
        description="Start a local Apache Kafka (unless KAFKA_BOOTSTRAP_SERVERS is set), create the topics, start "
        "a streams worker, the Prometheus exporter, alert delivery, the replay archive and the audit log, publish a "
        "simulated multi-tenant fleet with scripted incidents, wait until every part has caught up, and print what "
        "each produced, checked against the simulator's ground truth (exit 1 when a check fails). It writes "
        "report.html (charts, no network) next to its outputs and logs in the work directory. With an OTLP endpoint "
        "configured it sends the sessions' traces there too.",
    )
    p.add_argument("--tenants", type=int, default=4, help="simulated tenants (default 4)")
    p.add_argument("--minutes", type=int, default=12, help="minutes of simulated traffic (default 12)")
    p.add_argument("--seed", type=int, default=7, help="simulator seed (default 7)")
    p.add_argument("--partitions", type=int, default=3, help="partitions of the events topic (default 3)")
    p.add_argument("--timeout", type=float, default=180, help="seconds to wait for each part to catch up")
    p.add_argument("--workdir", help="where the demo writes its outputs and logs (default $AGENTWATCH_HOME/demo/<run>)")
    p.add_argument("--traces", action="store_true",
                   help="also run `agentwatch traces run` to the OTLP endpoint of the OTEL_EXPORTER_OTLP_* variables "
                   "(without this flag it runs only when they name an endpoint other than the default)")
    p.add_argument("--otlp-endpoint", metavar="URL",
                   help="also run `agentwatch traces run` and send the demo's spans to this OTLP/HTTP traces URL "
                   "(e.g. http://127.0.0.1:6006/v1/traces for Phoenix)")
    p.set_defaults(func=run)
