"""``agentwatch demo``: the whole pipeline end to end on this machine, with a visible result.

Each part runs as the process an operator would run (``agentwatch simulate``, ``agentwatch worker``, ...), against
the broker in ``KAFKA_BOOTSTRAP_SERVERS`` or, when that is unset, a throw-away local Apache Kafka started for the
demo and stopped at its end. Topic names get a per-run suffix so a demo never mixes with earlier data.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agentwatch.config import Settings, TopicNames
from agentwatch.topics import default_topics, ensure_topics


def _say(msg: str) -> None:
    print(f"\n== {msg}", file=sys.stderr, flush=True)


@contextmanager
def _broker(settings: Settings) -> Iterator[str]:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        _say(f"using the Kafka broker at {settings.bootstrap_servers}")
        yield settings.bootstrap_servers
        return
    from agentwatch.broker.launcher import LocalKafka

    _say("starting a local Apache Kafka broker (first run resolves its jars from Maven Central)")
    with LocalKafka(settings.home, progress=lambda m: print(f"   {m}", file=sys.stderr, flush=True)) as kafka:
        print(f"   broker up at {kafka.bootstrap_servers} (Kafka {kafka.kafka_version})", file=sys.stderr)
        yield kafka.bootstrap_servers
    _say("local broker stopped")


def _cli(*args: str, env: dict[str, str]) -> list[str]:
    return [sys.executable, "-m", "agentwatch", *args]


def run(args: argparse.Namespace, settings: Settings) -> int:
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]
    workdir = Path(args.workdir or settings.home / "demo" / run_id)
    workdir.mkdir(parents=True, exist_ok=True)
    topics = TopicNames.from_env() if args.reuse_topics else TopicNames(
        events=f"agentwatch.demo-{run_id}.events", dead_letter=f"agentwatch.demo-{run_id}.events.dlq",
        metrics=f"agentwatch.demo-{run_id}.metrics", alerts=f"agentwatch.demo-{run_id}.alerts")
    with _broker(settings) as bootstrap:
        settings = settings.with_(bootstrap_servers=bootstrap, topics=topics, events_partitions=args.partitions)
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
               "AGENTWATCH_EVENTS_TOPIC": topics.events, "AGENTWATCH_DLQ_TOPIC": topics.dead_letter,
               "AGENTWATCH_METRICS_TOPIC": topics.metrics, "AGENTWATCH_ALERTS_TOPIC": topics.alerts,
               "AGENTWATCH_EVENTS_PARTITIONS": str(args.partitions)}

        _say("creating topics")
        for name, status in ensure_topics(bootstrap, default_topics(settings), settings.replication_factor).items():
            print(f"   {name}: {status}", file=sys.stderr)

        _say(f"simulating {args.tenants} tenants for {args.duration} of event time, with incidents")
        truth = workdir / "truth.json"
        sim = subprocess.run(_cli("simulate", "--tenants", str(args.tenants), "--duration", args.duration,
                                  "--seed", str(args.seed), "--truth", str(truth), env=env), env=env)
        if sim.returncode != 0:
            print(f"demo: simulate failed (exit {sim.returncode})", file=sys.stderr)
            return sim.returncode

        _say("reading the events back from Kafka and decoding them")
        shown = subprocess.run(_cli("consume", "--samples", "4", env=env), env=env)
        if shown.returncode != 0:
            return shown.returncode
        _say(f"done; ground truth and demo files in {workdir}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "demo",
        help="run the pipeline end to end on a local Kafka with simulated agents and show the result",
        description="Start a local Apache Kafka (unless KAFKA_BOOTSTRAP_SERVERS is set), create the topics, publish "
        "a simulated multi-tenant agent fleet with scripted incidents, and show what arrived: events per tenant "
        "and type, decoded samples. Topics get a per-run suffix unless --reuse-topics is given.",
    )
    p.add_argument("--tenants", type=int, default=4, help="simulated tenants (default 4)")
    p.add_argument("--duration", default="20m", help="simulated event time (default 20m)")
    p.add_argument("--seed", type=int, default=7, help="simulator seed (default 7)")
    p.add_argument("--partitions", type=int, default=3, help="partitions of the events topic (default 3)")
    p.add_argument("--workdir", help="where the demo writes its files (default $AGENTWATCH_HOME/demo/<run>)")
    p.add_argument("--reuse-topics", action="store_true", help="use the configured topic names, not per-run ones")
    p.set_defaults(func=run)
