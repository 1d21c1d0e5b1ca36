"""Pure logic of tail confirmation and anchor comparison, property-tested: a record is confirmed exactly when the
topic holds the same event at the offset it names; the verifier flags a rollback exactly when the log holds fewer
checkpoints than the witness saw, or a different one."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from sinks.audit_anchor import newest_per_stream
from sinks.audit_format import RecordCipher, canonical
from sinks.audit_source import event_key, unconfirmed
from sinks.audit_verify import StreamSummary, VerifyReport, check_anchors

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**53, 2**53), st.text(max_size=20))
events = st.fixed_dictionaries(
    {"tenant": st.text(min_size=1, max_size=10), "type": st.sampled_from(["session_start", "memory_cleared"])},
    optional={"event_id": st.text(min_size=1, max_size=12), "payload": st.text(max_size=40),
              "extra": st.dictionaries(st.text(max_size=5), scalars, max_size=3)},
)
KEY = bytes(range(32))


def record_of(event: dict, ref: tuple[str, int, int], cipher: RecordCipher | None = None) -> dict:
    rec = {"kind": "event", "tenant": event["tenant"], "stream": "session", "seq": 7, "event_id": event_key(event),
           "src": {"topic": ref[0], "partition": ref[1], "offset": ref[2]}}
    if cipher is not None:
        rec["enc"] = cipher.encrypt(event, rec["tenant"], "session", 7, rec["event_id"])
    else:
        rec["event"] = dict(event)
    return rec


@settings(max_examples=200, deadline=None)
@given(event=events, others=st.lists(events, max_size=3), offset=st.integers(0, 10**9), encrypt=st.booleans())
def test_a_record_is_confirmed_by_the_same_event_at_its_offset(event, others, offset, encrypt):
    cipher = RecordCipher(KEY) if encrypt else None
    ref = ("topic", 0, offset)
    rec = record_of(event, ref, cipher)
    batch = [o for o in others if event_key(o) != event_key(event)] + [event]
    random.Random(offset).shuffle(batch)
    assert unconfirmed(rec, {ref: batch}, cipher) is None
    assert unconfirmed(rec, {("topic", 0, offset + 1): batch}, cipher) is not None  # another offset
    assert unconfirmed(rec, {}, cipher) is not None  # gone from the topic
    assert unconfirmed({k: v for k, v in rec.items() if k != "src"}, {ref: batch}, cipher) == \
        "it names no source offset"


@settings(max_examples=200, deadline=None)
@given(event=events, field=st.sampled_from(["type", "payload", "tenant", "extra"]), value=scalars)
def test_any_changed_field_is_not_confirmed(event, field, value):
    ref = ("topic", 3, 42)
    forged = {**event, field: value}
    if canonical(forged) == canonical(event):
        return
    rec = record_of(forged, ref)
    rec["event_id"] = event_key(event)  # claims to be the topic's event
    assert unconfirmed(rec, {ref: [event]}, None) is not None


def summary(tenant: str, stream: str, sigs: list[str]) -> StreamSummary:
    s = StreamSummary(tenant, stream, checkpoints=len(sigs), anchored_seq=len(sigs) * 10)
    s.sigs = {n: sig for n, sig in enumerate(sigs, 1)}
    return s


@settings(max_examples=300, deadline=None)
@given(total=st.integers(1, 30), kept=st.integers(1, 30), seen=st.integers(1, 30), replaced=st.booleans())
def test_anchor_check_flags_exactly_rollback_and_replacement(total, kept, seen, replaced):
    kept, seen = min(kept, total), min(seen, total)
    sigs = [f"sig{n}" for n in range(1, total + 1)]
    local = sigs[:kept]
    if replaced and kept >= seen:
        local = [*local[:seen - 1], "forged", *local[seen:]]
    report = VerifyReport(streams=[summary("t", "session", local)])
    witness = [{"tenant": "t", "stream": "session", "n": n, "seq": n * 10, "sig": sigs[n - 1]}
               for n in range(1, seen + 1)]
    random.Random(total).shuffle(witness)
    found = [f.check for f in check_anchors(report, witness, None)]
    if kept < seen:
        assert found == ["anchor_rollback"]
    elif replaced:
        assert found == ["anchor_mismatch"]
    else:
        assert found == []


@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.sampled_from(["x", "y"]), st.integers(1, 50)),
                min_size=1, max_size=30))
def test_newest_per_stream_is_the_highest_n_in_any_order(items):
    cps = [{"tenant": t, "stream": s, "n": n} for t, s, n in items]
    newest = newest_per_stream(cps)
    for (t, s), cp in newest.items():
        assert cp["n"] == max(n for tt, ss, n in items if (tt, ss) == (t, s))
    assert newest == newest_per_stream(list(reversed(cps)))
