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
