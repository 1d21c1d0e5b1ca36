"""The archive's files are byte for byte those of the frozen reference writer (``tests/archive_reference``: the code
before the rebuild was made faster, with the full sanitiser on every row and Agentao's ``json.dumps`` per line).

Whatever the writer's fast paths skip or fuse, the files must not change: the same records go through
``ArchiveSink.process`` into both writers, and every file (name, bytes, mtime) is compared; on a simulated fleet
under every capture-flag setting, and on hostile input: odd strings (control characters, quotes, backslashes,
lone surrogates arriving as JSON escapes, non-BMP text), huge tool results, secrets in tool arguments and in
every other field, payloads that are not objects or not JSON, upstream redaction counts, ``_`` keys.
"""

from __future__ import annotations

import json
import string
import zlib
from pathlib import Path
from typing import Any

import pytest
from archive_reference.archive_store import ArchiveWriter as ReferenceWriter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_redaction import OTHER_SHAPES, PER_KIND

from producers.simulator import FleetSimulator
from schemas.codec import AvroCodec
from sinks.archive import HOST_FIELDS
from sinks.archive_sink import ArchiveSink
from sinks.archive_store import ArchiveWriter

T0 = 1_767_225_600_000_000
SECRETS = [*PER_KIND.values(), *OTHER_SHAPES]
FLAG_SETS = [
    None,
    {"capture_full_llm_io": True, "capture_tool_result_full": True, "capture_plugin_hook_output_full": True},
    {"capture_llm_delta": False},
]


def to_records(events: list[dict[str, Any]], partitions: int = 3, per_record: int = 7
               ) -> list[tuple[int, int, bytes]]:
    """Events batched per partition of their session, in order, as the publisher sends them."""
    codec = AvroCodec()
    batches: dict[int, list[list[dict[str, Any]]]] = {}
    for e in events:
        p = zlib.crc32(e["session_id"].encode("utf-8", "surrogatepass")) % partitions
        part = batches.setdefault(p, [[]])
        if len(part[-1]) >= per_record:
            part.append([])
        part[-1].append(e)
    records = []
    for p, part in sorted(batches.items()):
        records += [(p, off, codec.encode_batch(f"prod-{p}", off, T0, batch)) for off, batch in enumerate(part)]
    records.sort(key=lambda r: (r[1], r[0]))  # partitions interleaved as a consumer sees them
    return records


def tree(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*.jsonl"))}


def write(writer: Any, records: list[tuple[int, int, bytes]], batch: int = 5) -> dict[str, tuple[bytes, int]]:
    sink = ArchiveSink("127.0.0.1:9", "unused", writer)
    for i in range(0, len(records), batch):
        sink.process(records[i:i + batch])
        writer.flush()
    writer.close()
    return tree(writer.root)


def assert_identical(tmp_path: Path, records: list[tuple[int, int, bytes]], **kw: Any) -> dict[str, Any]:
    ours = write(ArchiveWriter(tmp_path / "ours", **kw), records)
    ref = write(ReferenceWriter(tmp_path / "ref", **kw), records)
    assert sorted(ours) == sorted(ref)
    for name in ref:
        if ours[name] != ref[name]:  # the first differing line, readable
            a, b = ours[name][0].split(b"\n"), ref[name][0].split(b"\n")
            diff = next((i, x, y) for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y) \
                if a != b else ("mtime", ours[name][1], ref[name][1])
            pytest.fail(f"{name} differs at line {diff[0]}:\n ours {diff[1]!r}\n ref  {diff[2]!r}")
    return ours


@pytest.mark.parametrize("flags", FLAG_SETS)
def test_a_simulated_fleet_is_archived_byte_for_byte_as_the_reference_does(tmp_path, flags):
    events = list(FleetSimulator(seed=11, tenants=["acme", "Globex/ü"], services=2, duration_s=120).events())
    files = assert_identical(tmp_path, to_records(events), flags=flags)
    assert len(files) > 10 and sum(len(b) for b, _ in files.values()) > 100_000


@pytest.mark.parametrize("max_sessions", [1, 3])
def test_sessions_evicted_and_met_again_are_archived_byte_for_byte(tmp_path, max_sessions):
    """With room for 1 or 3 sessions, every flush evicts most of them and the next event of one re-reads its file
    (the writer's remembered last session is dropped then too): the files stay those of the reference."""
    events = list(FleetSimulator(seed=5, tenants=["acme", "initech"], services=2, duration_s=60).events())
    files = assert_identical(tmp_path, to_records(events), max_sessions=max_sessions)
    assert len(files) > 5


# -- hostile input ----------------------------------------------------------------------------------------------------

_ODD = st.sampled_from(["", "\x00", "\x1f\x7f", '"', "\\", "\\u0000", "\u2028\u2029", "😀", "é", "\ufeff", "\n\t\r",
                        "\ud800", "\udfff", "NaN", "-0", "1e400", "null", "token", "code", "api", "sk-", "4111 1111"])
_TEXT = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=string.printable, max_size=60),
    st.lists(st.one_of(_ODD, st.sampled_from(SECRETS), st.text(max_size=8)), max_size=6).map("".join),
    st.sampled_from(SECRETS),
    st.tuples(st.integers(4_000, 30_000), st.sampled_from(SECRETS), st.integers(0, 100)).map(
        lambda t: ("lorem ipsum " * (t[0] // 12))[:t[0] * t[2] // 100] + t[1] + "x" * (t[0] - t[0] * t[2] // 100)),
)
_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=True), _TEXT)
_VALUE = st.recursive(_SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(_TEXT, inner, max_size=4)), max_leaves=12)
_KEYS = st.sampled_from(["chunk", "content", "text", "args", "tool", "call_id", "status", "error", "message",
                         "detail", "user_message", "final_text", "answer", "value", "output_preview", "model",
                         "redaction_hits", "truncated", "content_truncation", "content_hash", "_private",
                         "_subagent_usage", "usage", "phase", "outcome", "task", "cwd", "working_directory", "api_key",
                         "password", "prompt_tokens", "tool_count", "finish_reason_missing", "incomplete_reason"])
_HITS = st.one_of(st.dictionaries(st.sampled_from(["jwt", "kv_secret", "x"]), st.integers(-1, 5), max_size=2),
                  st.just("bogus"), st.just({"jwt": True}))


def _payload_text(obj: dict[str, Any], style: int) -> str:
    if style == 0:
        return json.dumps(obj, ensure_ascii=True, allow_nan=True)  # surrogates travel as \ud800 escapes
    if style == 1:
        return json.dumps(obj, ensure_ascii=False, allow_nan=True).encode("utf-8", "replace").decode("utf-8")
    return json.dumps(obj, ensure_ascii=True)[:-1] + (", " if obj else "") + '"x": 1} trailing' if style == 2 \
        else json.dumps(list(obj.values()) or "scalar", ensure_ascii=True)


@st.composite
def _payload(draw: Any) -> str | None:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return None
    obj = draw(st.dictionaries(_KEYS, _VALUE, max_size=6))
    if draw(st.booleans()):
        obj["redaction_hits"] = draw(_HITS)
    style = 0 if kind < 6 else 1 if kind < 8 else draw(st.integers(2, 3))
    return _payload_text(obj, style)


_TYPES = sorted({"thinking", "session_start", "session_end", "turn_begin", "turn_end", "llm_text",
                 "tool_confirmation", "confirm_resolved", "tool_start", "tool_output", "tool_complete", "tool_result",
                 "agent_start", "agent_end", "error", *HOST_FIELDS, "llm_call_started", "llm_call_completed",
                 "llm_call_delta", "llm_call_io", "ask_user_answered", "memory_write", "plugin_hook_fired",
                 "model_changed", "compaction_settled", "turn_start", "llm_retry", "unknown"})
_AVRO_TEXT = _TEXT.map(lambda s: s.encode("utf-8", "replace").decode("utf-8"))  # Avro strings are valid UTF-8
_OPT_STR = st.one_of(st.none(), _AVRO_TEXT)
_ID = _AVRO_TEXT.map(lambda s: s[:200] or "_")
_OPT_INT = st.one_of(st.none(), st.integers(0, 2**40))


@st.composite
def _event(draw: Any, session: str, seq: int, t: int) -> dict[str, Any]:
    etype = draw(st.sampled_from(_TYPES))
    return {
        "event_id": draw(st.one_of(st.uuids().map(lambda u: u.hex), _ID)),
        "schema_version": 3, "event_time": t, "producer_time": t, "tenant": draw(st.sampled_from(["acme", "Ü/..", ""])),
        "session_id": session, "seq": seq, "type": etype,
        "turn_id": draw(st.one_of(st.none(), st.sampled_from(["t1", "t2", "t/3"]))),
        "child_task_id": draw(st.one_of(st.none(), st.just("child-1"))),
        "tool_name": draw(st.one_of(st.none(), st.sampled_from(["read_file", "mcp_github_x", "run_shell_command"]))),
        "call_id": draw(_OPT_STR), "status": draw(_OPT_STR), "duration_ms": draw(_OPT_INT),
        "prompt_tokens": draw(_OPT_INT), "completion_tokens": draw(_OPT_INT), "model": draw(_OPT_STR),
        "error_class": draw(_OPT_STR), "error_message": draw(_OPT_STR), "finish_reason": draw(_OPT_STR),
        "incomplete_reason": draw(_OPT_STR), "confirm_outcome": draw(st.sampled_from([None, "allow", "reject"])),
        "permission_decision": draw(st.sampled_from([None, "allow", "deny"])), "payload": draw(_payload()),
    }


@st.composite
def hostile_events(draw: Any) -> list[dict[str, Any]]:
    sessions = draw(st.lists(st.one_of(st.sampled_from(["s1", "s/2", "s 3"]), _ID),
                             min_size=1, max_size=3, unique=True))
    seqs = dict.fromkeys(sessions, 0)
    events = []
    t = T0
    for _ in range(draw(st.integers(1, 40))):
        s = draw(st.sampled_from(sessions))
        seqs[s] = 1 if draw(st.integers(0, 12)) == 0 else seqs[s] + 1  # now and then a session starts over
        t += draw(st.integers(0, 3_000_000))
        events.append(draw(_event(s, seqs[s], t)))
    return events


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow, HealthCheck.data_too_large])
@given(events=hostile_events(), flags=st.sampled_from(FLAG_SETS))
def test_hostile_events_are_archived_byte_for_byte_as_the_reference_does(tmp_path_factory, events, flags):
    tmp = tmp_path_factory.mktemp("hostile")
    assert_identical(tmp, to_records(events), flags=flags)


# -- the sanitiser's pre-check ----------------------------------------------------------------------------------------

_KINDS = sorted({"tool_started", "tool_result", "tool_output_chunk", "assistant_text_chunk", "llm_call_completed",
                 "memory_write", "ask_user_answered", "plugin_hook_fired", "user_message", "replay_footer"})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(kind=st.sampled_from(_KINDS), payload=st.dictionaries(_KEYS | _TEXT, _VALUE, max_size=6),
       flags=st.sampled_from(FLAG_SETS))
def test_the_pre_check_never_skips_a_payload_the_full_sanitiser_would_change(kind, payload, flags):
    """``sanitize_encoded`` returns a payload untouched only when ``sanitize`` gives the same JSON text."""
    from archive_reference.redact import sanitize as reference_sanitize

    from sinks.redact import capture_flags, sanitize_encoded
    flags = capture_flags(flags)
    clean, text = sanitize_encoded(kind, payload, flags)
    expected = reference_sanitize(kind, payload, flags)
    assert text == json.dumps(expected, ensure_ascii=False, allow_nan=False)
    if clean is payload:  # the fast path: the full sanitiser would have changed nothing
        assert json.dumps(payload, ensure_ascii=False, allow_nan=False) == text


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(values=st.lists(st.sampled_from(SECRETS) | _TEXT, min_size=1, max_size=5), rounds=st.integers(1, 3))
def test_the_values_check_answers_the_same_from_its_cache(values, rounds):
    """``_values_may_hold`` remembers each value's answer: a value seen before (a hit), with others around it, in
    any position, gives the answer a fresh check gives, and never "clean" for a value the scanner would change."""
    from schemas.redaction import may_hold_secret, redact
    from sinks import redact as sinks_redact

    payload = {f"k{i}": v for i, v in enumerate(values)} | {"nested": {"list": list(reversed(values))}}
    fresh = any(may_hold_secret(v) for v in values if len(v) >= 13)
    for _ in range(rounds):  # the first call may fill the cache, the next ones read it
        assert sinks_redact._values_may_hold(payload) is fresh
    if not fresh:
        assert all(redact(v) == v for v in values)


def test_the_values_cache_is_bounded(monkeypatch):
    from sinks import redact as sinks_redact

    monkeypatch.setattr(sinks_redact, "_MAY_HOLD", {})
    monkeypatch.setattr(sinks_redact, "_MAY_HOLD_MAX_ENTRIES", 8)
    for i in range(50):
        assert sinks_redact._values_may_hold({"v": f"plain words number {i}"}) is False
    assert sinks_redact._values_may_hold({"v": "x" * 600 + " password=hunter22"}) is True
    assert len(sinks_redact._MAY_HOLD) <= 8
    assert all(len(k) <= sinks_redact._MAY_HOLD_MAX_LEN for k in sinks_redact._MAY_HOLD)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(text=st.sampled_from(SECRETS) | _TEXT, before=st.dictionaries(st.sampled_from(["url_credentials", "x"]),
                                                                    st.integers(1, 3), max_size=2))
def test_the_sanitisers_scan_cache_gives_what_redact_gives(text, before):
    """``scan_text`` (answers from the pre-check's and its own cache) returns what ``redact`` returns and adds the
    same counts, the first time (a miss) and the second (a hit), into a counts dict that already holds some."""
    from schemas.redaction import redact
    from sinks.redact import scan_text

    want_hits = dict(before)
    want = redact(text, want_hits)
    for _ in range(2):
        hits = dict(before)
        assert scan_text(text, hits) == want
        assert hits == want_hits
