"""What a sealed record costs to encode: read back from its JSON as stage 2 keeps it, with and without the bodies.

    PYTHONPATH=. .venv/bin/python bench/bench_seal_encoding.py [--events 30000] [--rounds 3]

Stage 2 keeps the record last emitted for each window as JSON (``orjson``) and re-emits it with ``sealed=true``
when the allowed lateness has passed: one more record per window, as many as the first emissions in a steady
stream. Read back from JSON its ``Duration`` records are plain dicts, which the generated encoder writes field by
field; :func:`streams.merge._reencoded` gives them their Avro bodies again (``streams.sketch.reencoded_duration``).
This takes the metrics records of a ``bench_worker_replay`` run, round-trips them through JSON, and times the
encoding of all of them both ways (CPU time per record, alternating the two in every round) after checking that
both give the same bytes. ``--rounds 0`` only builds the input (for an instruction-count baseline under
``valgrind --tool=cachegrind``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_worker import build_workload, synthetic_events  # noqa: E402
from bench_worker_replay import replay  # noqa: E402

from streams.app import metrics_encoder  # noqa: E402
from streams.merge import _reencoded  # noqa: E402
from streams.metrics_codec import MetricsCodec  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=30_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=("plain", "bodies"), help="time one way only (for instruction counts)")
    args = ap.parse_args(argv)
    wl = build_workload(synthetic_events(args.events, 20, 30, 2, 7), 500, "synthetic")
    kept: list[dict] = []
    replay(wl.records, 2, kept)
    stored = [orjson.dumps(r) for r in kept]
    encode = metrics_encoder(MetricsCodec())
    plain = [encode(orjson.loads(b)) for b in stored]
    bodies = [encode(_reencoded(orjson.loads(b))) for b in stored]
    if plain != bodies or plain != [encode(r) for r in kept]:
        raise SystemExit("the re-encoded records differ from the plain ones")
    print(f"{len(stored)} metrics records of a replay of {wl.events:,} events, read back from JSON; the same bytes "
          "both ways")
    for r in range(args.rounds):
        times = {}
        for way in ("plain", "bodies"):
            if args.only and way != args.only:
                continue
            t0 = time.process_time()
            if way == "plain":
                for b in stored:
                    encode(orjson.loads(b))
            else:
                for b in stored:
                    encode(_reencoded(orjson.loads(b)))
            times[way] = (time.process_time() - t0) / len(stored) * 1e6
        line = ", ".join(f"{way} {us:,.0f} CPU us per record" for way, us in times.items())
        ratio = f"; bodies / plain {times['bodies'] / times['plain']:.2f}" if len(times) == 2 else ""
        print(f"round {r + 1}: {line}{ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
