"""Stage 1 without Kafka: dead-letter decisions, dedup, partials and watermark markers, crash-safe state pairs."""

from __future__ import annotations

import json
import uuid
from typing import Any

from schemas.codec import AvroCodec
from streams.ingest import OFFSET_PRODUCER, DeadLetter, Ingest, dead_letter_headers, meta_key
from streams.partials import Marker

US = 1_000_000
T0 = 1_767_225_600 * US  # a window boundary (60 s)


def ev(t_s: float, tenant: str = "acme", type_: str = "turn_end", **extra: Any) -> dict[str, Any]:
    return {"event_id": uuid.uuid4().hex, "event_time": T0 + int(t_s * US), "producer_time": T0 + int(t_s * US),
            "tenant": tenant, "session_id": "s1", "seq": 1, "type": type_, **extra}


def ingest() -> Ingest:
    return Ingest(AvroCodec(), window_s=60, grace_s=10, max_future_s=None)


def test_undecodable_values_become_dead_letters_with_their_reason() -> None:
    codec = AvroCodec(max_record_bytes=10_000)
    stage = Ingest(codec, 60, 10)
    good = codec.encode_event(ev(1))
    unknown_fp = good[:2] + bytes(8) + good[10:]
    cases = {b"\x00\x01garbage-bytes": "unknown_schema_id",
             b"\xc3\x01abc": "truncated_header", b"random text": "bad_magic", good[:15]: "invalid_avro",
             unknown_fp: "unknown_fingerprint", b"\xc3\x01" + bytes(20_000): "oversize", b"": "empty"}
    for offset, (value, reason) in enumerate(cases.items()):
        out = stage.handle(0, offset, value)
        assert out.dead_letter is not None and out.dead_letter.reason == reason, (value[:12], out)
        assert out.events == 0 and not out.partials and not out.markers
    assert stage.stream_time(0) is None  # nothing was folded
    out = stage.handle(0, 99, good)
    assert out.dead_letter is None and out.events == out.folded == 1


def test_dead_letter_headers_name_reason_and_source() -> None:
    headers = dict(dead_letter_headers(DeadLetter("invalid_avro", "EOF"), "ev", 3, 42, 1700, [("trace", b"x"),
                                                                                               ("dlq.reason", b"old")]))
    assert headers["dlq.reason"] == b"invalid_avro" and headers["dlq.detail"] == b"EOF"
    assert headers["dlq.source.topic"] == b"ev" and headers["dlq.source.partition"] == b"3"
    assert headers["dlq.source.offset"] == b"42" and headers["dlq.source.timestamp"] == b"1700"
    assert headers["trace"] == b"x"  # original headers kept, a stale dlq.* one replaced


def test_batches_and_single_events_are_deduplicated_on_redelivery() -> None:
    codec, stage = AvroCodec(), ingest()
    batch = codec.encode_batch("p1", 7, T0, [ev(1), ev(2)])
    assert stage.handle(0, 10, batch).folded == 2
    again = stage.handle(0, 11, batch)  # the same batch at another offset (a producer retry)
    assert again.folded == 0 and again.duplicate
    single = codec.encode_event(ev(3))
    assert stage.handle(0, 12, single).folded == 1
    assert stage.handle(0, 12, single).duplicate  # the same offset again: a consumer redelivery
    assert stage.engine.counters(0)["duplicate_batches"] == 2
    assert OFFSET_PRODUCER in stage.engine.snapshot(0)["meta"]["applied"]


def test_closed_windows_become_partials_then_one_marker_per_boundary() -> None:
    codec, stage = AvroCodec(), ingest()
    first = stage.handle(0, 0, codec.encode_event(ev(5, "acme")))
    assert first.markers == [Marker(0, T0 - 60 * US)]  # stream time 5 s - grace: the window before is closed
    second = stage.handle(0, 1, codec.encode_event(ev(30, "globex")))
    assert second.markers == [Marker(0, T0)]  # 30 - 10 = 20 s: every window ending at or before T0 is closed
    out = stage.handle(0, 2, codec.encode_event(ev(69.9, "acme")))
    assert not out.partials and not out.markers  # 60 s + 10 s grace not reached yet
    out = stage.handle(0, 3, codec.encode_event(ev(70, "acme")))
    assert sorted(p.tenant for p in out.partials) == ["acme", "globex"]
    assert all(p.source_partition == 0 and p.window_start_us == T0 for p in out.partials)
    assert out.markers == [Marker(0, T0 + 60 * US)]
    out = stage.handle(0, 4, codec.encode_event(ev(100, "acme")))
    assert not out.partials and not out.markers  # no new boundary passed
    late = stage.handle(0, 5, codec.encode_event(ev(10, "acme")))
    assert late.late == 1 and late.folded == 0


def test_quiet_partition_closes_by_heartbeat_and_empty_one_declares_itself_idle() -> None:
    codec, stage = AvroCodec(), ingest()
    wall = T0 + 3600 * US
    stage.handle(0, 0, codec.encode_event(ev(5)), now_us=wall)
    assert not stage.heartbeat(0, wall + 60 * US).partials
    out = stage.heartbeat(0, wall + 65 * US)  # stream time 5 + 65 = 70: window [0, 60) closed
    assert [p.tenant for p in out.partials] == ["acme"]
    assert stage.idle_marker(0) is None  # it has data
    assert stage.idle_marker(1) == Marker(1, None, idle=True)
    assert stage.idle_marker(1) is None  # once


def test_state_pairs_restore_the_partition_exactly() -> None:
    codec, stage = AvroCodec(), ingest()
    stage.handle(2, 0, codec.encode_batch("p1", 1, T0, [ev(5), ev(50, "globex"), ev(65)]))
    pairs = stage.state_changes(2)
    keys = [k for k, _ in pairs]
    assert keys[-1] == meta_key(2) and all(k.startswith("2|s|") for k in keys[:-1])
    assert stage.state_changes(2) == []  # nothing changed since
    table = {k: json.loads(json.dumps(v)) for k, v in pairs}  # as read back from a JSON changelog
    stage.handle(2, 1, codec.encode_batch("p1", 2, T0, [ev(80)]))  # closes [0, 60): slot deletes after the meta
    pairs = stage.state_changes(2)
    metas = [i for i, (k, _) in enumerate(pairs) if k == meta_key(2)]
    deletes = [i for i, (_, v) in enumerate(pairs) if v is None]
    assert len(metas) == 1 and deletes and min(deletes) > metas[0]
    for k, v in pairs:
        if v is None:
            table.pop(k, None)
        else:
            table[k] = json.loads(json.dumps(v))
    other = ingest()
    other.restore(2, table.items())
    assert other.engine.snapshot(2) == stage.engine.snapshot(2)
    assert other.handle(2, 1, codec.encode_batch("p1", 2, T0, [ev(80)])).duplicate  # the replay is skipped


def test_single_event_ids_held_for_lateness_are_table_records_of_their_own() -> None:
    """The ids of single events in closed windows go to ``<p>|i|<pane>|<tenant>`` records (written before the meta,
    deleted after it once expired), never into the meta, and a restore from the table still knows them."""
    codec = AvroCodec()
    stage = Ingest(codec, window_s=60, grace_s=0, max_future_s=None, allowed_lateness_s=120)
    first = ev(5)
    stage.handle(1, 0, codec.encode_event(first))
    stage.handle(1, 1, codec.encode_event(ev(70)))  # [0, 60) closes: its pane's id is kept for late copies
    pairs = stage.state_changes(1)
    keys = [k for k, _ in pairs]
    (ids,) = [k for k in keys if k.startswith("1|i|")]
    assert ids == f"1|i|{T0}|acme" and keys.index(ids) < keys.index(meta_key(1))
    assert dict(pairs)[ids]["ids"] == [first["event_id"]] and "closed_ids" not in dict(pairs)[meta_key(1)]
    table = {k: json.loads(json.dumps(v)) for k, v in pairs if v is not None}
    other = Ingest(codec, window_s=60, grace_s=0, max_future_s=None, allowed_lateness_s=120)
    other.restore(1, table.items())
    assert other.handle(1, 7, codec.encode_event(first)).folded == 0  # a late copy at another offset
    other.handle(1, 8, codec.encode_event(ev(300)))  # [0, 60) expires: its id record is deleted after the meta
    pairs = other.state_changes(1)
    keys = [k for k, _ in pairs]
    assert (ids, None) in pairs and keys.index(ids) > keys.index(meta_key(1))
