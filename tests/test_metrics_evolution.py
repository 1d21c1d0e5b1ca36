"""WindowedMetrics is FULL_TRANSITIVE too: v1 records (before revisions) still read, and v1 readers read v2."""

from __future__ import annotations

import io

import fastavro

from schemas.codec import SINGLE_OBJECT_MAGIC
from schemas.contract import crc64_fingerprint, strip_logical_types
from schemas.evolution import check_full_transitive
from streams.aggregate import TenantWindowAggregate
from streams.metrics_codec import MetricsCodec, history_json, schema_json

T0 = 1_767_225_600 * 1_000_000


def test_every_windowed_metrics_version_reads_every_other() -> None:
    versions = [*history_json(), schema_json()]
    assert len(versions) >= 2
    assert check_full_transitive(versions) == []


def test_a_v1_record_decodes_as_revision_zero_not_sealed() -> None:
    (v1,) = history_json()[:1]
    parsed = fastavro.parse_schema(strip_logical_types(v1))
    record = TenantWindowAggregate("acme", T0, T0 + 60_000_000).to_record()
    old = {k: v for k, v in record.items() if k not in ("revision", "sealed")}
    buf = io.BytesIO()
    buf.write(SINGLE_OBJECT_MAGIC + crc64_fingerprint(parsed))
    fastavro.schemaless_writer(buf, parsed, old)
    decoded = MetricsCodec().decode(buf.getvalue())
    assert decoded["revision"] == 0 and decoded["sealed"] is False and decoded["tenant"] == "acme"
    current = MetricsCodec()
    assert current.decode(current.encode(dict(record, revision=3, sealed=True)))["revision"] == 3


def test_a_v2_record_decodes_with_zero_cost_and_v2_readers_read_v3() -> None:
    v2 = history_json()[1]
    parsed = fastavro.parse_schema(strip_logical_types(v2))
    record = TenantWindowAggregate("acme", T0, T0 + 60_000_000).to_record()
    v3_only = ("cost_nusd", "llm_calls_unpriced", "cost_per_turn_usd", "cost_by_model", "cost_by_skill",
               "top_spenders")
    old = {k: v for k, v in record.items() if k not in v3_only}
    buf = io.BytesIO()
    buf.write(SINGLE_OBJECT_MAGIC + crc64_fingerprint(parsed))
    fastavro.schemaless_writer(buf, parsed, old)
    decoded = MetricsCodec().decode(buf.getvalue())
    assert (decoded["cost_nusd"], decoded["llm_calls_unpriced"], decoded["cost_per_turn_usd"]) == (0, 0, None)
    assert decoded["cost_by_model"] == {} and decoded["tenant"] == "acme"
    assert decoded["top_spenders"] == {"capacity": 0, "total_nusd": 0, "users": []}
    assert TenantWindowAggregate.from_record(decoded).spenders.capacity > 0  # an empty sketch to merge into
    # and a v2 reader reads a v3 record (new fields skipped)
    current = MetricsCodec()
    body = io.BytesIO(current.encode(dict(record, cost_nusd=5))[10:])
    back = fastavro.schemaless_reader(body, current.parsed, parsed)
    assert back["tenant"] == "acme" and "cost_nusd" not in back
