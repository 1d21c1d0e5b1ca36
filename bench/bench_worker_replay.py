"""The worker's two stages in one process, no Kafka: where the worker's Python time goes, quickly and repeatably.

    PYTHONPATH=. .venv/bin/python bench/bench_worker_replay.py [--events 300000] [--tenants 20] [--profile out.prof]
        [--replay-only]

Feeds ``bench_worker.py``'s synthetic workload (same generator, batch records of 500 events) through
``streams.ingest.Ingest`` (decode, checks, fold), the partials format (encoded and decoded as between the stages),
``streams.merge.MergeStage`` (merge, hopping windows, rules, spike detection, seals) and the metrics-record
encoder, as the worker does, without Faust, Kafka, the changelog table or the flushes. Prints events per CPU
second (process time: less sensitive to a shared machine's load than the wall clock) of the whole replay and of
the decode alone in the same run (the ratio is what to compare between code versions), and
the number of metrics records, which must equal ``expected_windows`` x 2 (tumbling and hopping) plus the seals.
Not a substitute for ``bench_worker.py`` (no I/O, no Faust), a microscope for the stages' own code.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import sys
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_worker import build_workload, synthetic_events  # noqa: E402

from schemas.codec import AvroCodec  # noqa: E402
from streams import partials as partials_format  # noqa: E402
from streams.aggregate import TenantWindowAggregate  # noqa: E402
from streams.app import metrics_encoder  # noqa: E402
from streams.ingest import Ingest  # noqa: E402
from streams.merge import MergeStage  # noqa: E402
from streams.metrics_codec import MetricsCodec  # noqa: E402
from streams.rules import RuleEngine, load_rules  # noqa: E402
from streams.spike import SpikeDetector, load_spike_config  # noqa: E402


def stages(partitions: int) -> tuple[Ingest, MergeStage]:
    """The worker's two stages as it runs them by default: 1-minute windows, 5-minute hopping, 1 h of lateness."""
    ingest = Ingest(AvroCodec(), 60, 10.0, None, 50, allowed_lateness_s=3600.0)
    merge = MergeStage(60, partitions, partitions, RuleEngine(load_rules(None)), SpikeDetector(load_spike_config(None)),
                       hop_size_s=300, allowed_lateness_s=3600.0)
    return ingest, merge


def replay(records: list[tuple[int, bytes, bytes]], partitions: int, keep: list[dict[str, Any]] | None = None,
           digest: Any = None, held: tuple[Ingest, MergeStage] | None = None) -> tuple[int, int]:
    """(metrics records encoded, their bytes) for the records fed through both stages (kept in ``keep``; the
    encoded records, in order, fed to ``digest`` when given: what a change of stage 2 must leave the same).
    ``held``: the stages to use (from :func:`stages`), so the caller can measure the state they hold afterwards."""
    ingest, merge = held or stages(partitions)
    encode = metrics_encoder(MetricsCodec())
    n = size = 0
    offsets = [0] * partitions
    for part, _key, value in records:
        out = ingest.handle(part, offsets[part], value)
        offsets[part] += 1
        per_q: list[list[partials_format.Partial | partials_format.Marker]] = [[] for _ in range(partitions)]
        for partial in out.partials:
            per_q[partials_format.tenant_partition(partial.tenant, partitions)].append(partial)
        for q, items in enumerate(per_q):
            items += out.markers
            if not items:
                continue
            _k, v = partials_format.encode_items(part, items)
            for item in partials_format.decode_items(v):
                res = merge.handle(q, item)
                for record in res.metrics + res.seals:
                    body = encode(record)
                    size += len(body)
                    n += 1
                    if digest is not None:
                        digest.update(len(body).to_bytes(4, "big") + body)
                    if keep is not None:
                        keep.append(record)
    return n, size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--tenants", type=int, default=20)
    ap.add_argument("--tools", type=int, default=30)
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", help="write a cProfile of one replay here")
    ap.add_argument("--replay-only", action="store_true",
                    help="skip the to_record + encode section (for instruction counts: rounds R minus rounds 0)")
    args = ap.parse_args(argv)
    wl = build_workload(synthetic_events(args.events, args.tenants, args.tools, args.partitions, 7), 500, "synthetic")
    codec = AvroCodec()
    for r in range(args.rounds):
        t0 = time.process_time()
        for _part, _key, value in wl.records:
            codec.decode(value)
        decode_s = time.process_time() - t0
        t0 = time.process_time()
        digest = hashlib.sha256()
        n, size = replay(wl.records, args.partitions, digest=digest)
        replay_s = time.process_time() - t0
        print(f"round {r + 1}: replay {wl.events / replay_s:,.0f} events per CPU s ({replay_s:.2f} s), decode alone "
              f"{wl.events / decode_s:,.0f}, replay / decode {decode_s / replay_s:.3f}; metrics records {n} "
              f"({size:,} bytes, sha256 {digest.hexdigest()[:16]}), windows {len(wl.windows)}")
    if args.replay_only:
        return 0
    # stage 2's record making alone: every metrics record of a replay rebuilt from its aggregate and encoded
    kept: list[dict[str, Any]] = []
    replay(wl.records, args.partitions, kept)
    aggs = [TenantWindowAggregate.from_record(orjson.loads(orjson.dumps(r))) for r in kept]
    encode = metrics_encoder(MetricsCodec())
    for r in range(args.rounds):
        t0 = time.process_time()
        for agg in aggs:
            encode(agg.to_record())
        cpu = time.process_time() - t0
        print(f"round {r + 1}: to_record + encode of {len(aggs)} metrics records: {cpu / len(aggs) * 1e6:,.0f} CPU us "
              "per record")
    if args.profile:
        cProfile.runctx("replay(wl.records, args.partitions)", globals(), locals(), args.profile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
