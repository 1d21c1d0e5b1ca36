"""Stage 1 of the worker alone (decode, range checks, dedup, fold, close), no Kafka: for instruction counts.

    PYTHONPATH=. .venv/bin/python bench/bench_stage1.py [--events 60000] [--rounds 1]

Feeds ``bench_worker.py``'s synthetic workload (batch records of 500 events) through ``streams.ingest.Ingest.handle``
``--rounds`` times (a fresh ``Ingest`` each round) after building the records. Under ``valgrind --tool=cachegrind
--cache-sim=no``, (instructions with ``--rounds 2``) - (with ``--rounds 0``), divided by the events, is stage 1's
cost per event, independent of the machine's load. Prints the CPU time per event and a digest of every partial
emitted (the same digest before and after a change means the same window contents).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_worker import build_workload, synthetic_events  # noqa: E402

from schemas.codec import AvroCodec  # noqa: E402
from streams.ingest import Ingest  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--tenants", type=int, default=20)
    ap.add_argument("--tools", type=int, default=30)
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args(argv)
    wl = build_workload(synthetic_events(args.events, args.tenants, args.tools, args.partitions, 7), 500, "synthetic")
    for r in range(args.rounds):
        ingest = Ingest(AvroCodec(), 60, 10.0, None, 50, allowed_lateness_s=3600.0)
        digest = hashlib.sha256()
        offsets = [0] * args.partitions
        t0 = time.process_time()
        for part, _key, value in wl.records:
            out = ingest.handle(part, offsets[part], value)
            offsets[part] += 1
            for partial in out.partials:
                digest.update(orjson.dumps(partial.record, option=orjson.OPT_SORT_KEYS))
        cpu = time.process_time() - t0
        print(f"round {r + 1}: {wl.events:,} events, {cpu / wl.events * 1e6:.2f} CPU us per event, "
              f"partials digest {digest.hexdigest()[:16]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
