"""Codec cost per event: fastavro (the baseline) against the generated codec, measured in the same run.

    .venv/bin/python bench/bench_codec.py [--events 500] [--rounds 9] [--seed 7]

On a shared machine CPU time still varies (caches, frequency, SMT siblings). Instruction counts do not: with
``--count CODEC:OP`` the script runs only that batch operation ``--rounds`` times and prints nothing, for

    valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null \
        .venv/bin/python bench/bench_codec.py --count generated:decode --rounds 4

(instructions per event = (I refs with --rounds 4 - I refs with --rounds 0) / (4 * events)).

Prints µs/event for encode and decode, single-event records and one batch of ``--events`` events, for
``AvroCodec(compiled=False)`` (fastavro) and ``AvroCodec()`` (schemas.codegen), and the ratio. Times are this
process's CPU time (``time.process_time``), so waiting for a core other engineers' jobs hold does not count; rounds
alternate between the two codecs so that what remains of the noise hits both alike. The figure is the best round,
the median in brackets. Both codecs must produce identical bytes and values, or the run stops.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from schemas.codec import AvroCodec

T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z in µs


def sample_events(n: int, seed: int) -> list[dict[str, Any]]:
    """A plausible mix (see MIX): every event has the 7 required fields and the 4 context strings (user, service,
    agent, turn); tool and LLM events add 3-9 typed fields, streamed text only a payload; the rest are null."""
    rng = random.Random(seed)
    tools = ["read_file", "write_file", "run_shell_command", "web_fetch", "search_code", "glob"]
    models = ["gpt-5-mini", "claude-sonnet-4-5", "qwen3-coder"]
    events = []
    for i in range(n):
        t = T0 + i * 1_500 + rng.randrange(1_000)
        ev: dict[str, Any] = {
            "event_id": uuid.UUID(int=rng.getrandbits(128)).hex,
            "event_time": t,
            "producer_time": t + rng.randrange(50, 500),
            "tenant": f"tenant-{rng.randrange(20):02d}",
            "session_id": uuid.UUID(int=rng.getrandbits(128)).hex,
            "seq": rng.randrange(1, 5_000),
            "user_id": f"user-{rng.randrange(1000)}",
            "service": "support-bot",
            "agent_name": "main",
            "turn_id": uuid.UUID(int=rng.getrandbits(128)).hex[:16],
        }
        kind = rng.random()
        if kind < 0.25:
            ev.update(type="tool_start", tool_name=rng.choice(tools), call_id=f"call_{rng.getrandbits(48):012x}",
                      payload=json.dumps({"args": {"path": f"/repo/src/mod{rng.randrange(99)}.py"}}))
        elif kind < 0.50:
            ev.update(type="tool_complete", tool_name=rng.choice(tools), call_id=f"call_{rng.getrandbits(48):012x}",
                      status=rng.choice(["ok", "ok", "ok", "error"]), duration_ms=rng.randrange(1, 30_000))
        elif kind < 0.65:
            prompt = rng.randrange(500, 120_000)
            ev.update(type="llm_call_completed", model=rng.choice(models), status="ok", finish_reason="tool_calls",
                      duration_ms=rng.randrange(200, 20_000), prompt_tokens=prompt,
                      completion_tokens=rng.randrange(1, 4_000), cache_read_tokens=prompt // 2,
                      reasoning_tokens=rng.randrange(0, 2_000))
        elif kind < 0.90:
            ev.update(type=rng.choice(["llm_text", "thinking", "tool_output"]),
                      payload=json.dumps({"chunk": "Let me read the file first. " * rng.randrange(1, 4)}))
        else:
            ev.update(type="turn_end", status="ok", duration_ms=rng.randrange(500, 120_000))
        events.append(ev)
    return events


MIX = "25% tool_start, 25% tool_complete, 15% llm_call_completed, 25% streamed text, 10% turn_end"


def _per_event(fn: Callable[[], object], count: int) -> float:
    start = time.process_time()
    fn()
    return (time.process_time() - start) / count * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=500, help="events per batch and per single-record pass")
    ap.add_argument("--rounds", type=int, default=9, help="alternating rounds per codec and operation")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--count", metavar="CODEC:OP", choices=[f"{c}:{o}" for c in ("fastavro", "generated")
                                                            for o in ("encode", "decode")],
                    help="only run the batch OP (encode|decode) with CODEC (fastavro|generated), silently")
    args = ap.parse_args(argv)

    events = sample_events(args.events, args.seed)
    n = len(events)
    codecs = {"fastavro": AvroCodec(compiled=False), "generated": AvroCodec()}
    singles = {name: [c.encode_event(e) for e in events] for name, c in codecs.items()}
    batches = {name: c.encode_batch("producer-1", 42, T0, events) for name, c in codecs.items()}
    if singles["fastavro"] != singles["generated"] or batches["fastavro"] != batches["generated"]:
        raise SystemExit("the generated encoder's bytes differ from fastavro's")
    decoded = {name: c.decode(batches["fastavro"]).events for name, c in codecs.items()}
    if decoded["fastavro"] != decoded["generated"]:
        raise SystemExit("the generated decoder's values differ from fastavro's")

    def ops(c: AvroCodec, name: str) -> dict[str, Callable[[], object]]:
        single, batch, enc, dec = singles[name], batches[name], c.encode_event, c.decode
        return {
            "encode single": lambda: [enc(e) for e in events],
            "decode single": lambda: [dec(v) for v in single],
            f"encode batch of {n}": lambda: c.encode_batch("producer-1", 42, T0, events),
            f"decode batch of {n}": lambda: dec(batch),
        }

    runs = {name: ops(c, name) for name, c in codecs.items()}
    if args.count:
        name, op = args.count.split(":")
        fn = runs[name][f"{op} batch of {n}"]
        for _ in range(args.rounds):
            fn()
        return 0
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for op in runs["fastavro"]:
            for name in codecs:
                times.setdefault((op, name), []).append(_per_event(runs[name][op], n))

    print(f"AgentEvent codec, {n} events ({MIX}; {len(batches['generated'])} bytes as one batch, "
          f"{sum(map(len, singles['generated'])) / n:.0f} bytes/event single), best of {args.rounds} rounds "
          "(median in brackets), CPU µs/event")
    print(f"{'operation':<22}{'fastavro':>18}{'generated':>18}{'speed-up':>10}{'generated ev/s':>16}")
    for op in runs["fastavro"]:
        base, ours = times[(op, "fastavro")], times[(op, "generated")]
        print(f"{op:<22}{min(base):>8.2f} ({statistics.median(base):>6.2f})"
              f"{min(ours):>8.2f} ({statistics.median(ours):>6.2f})"
              f"{min(base) / min(ours):>9.1f}x{1e6 / min(ours):>16,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
