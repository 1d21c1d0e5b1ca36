"""The archive's per-replay-kind sanitiser against Agentao's own (``agentao.replay.sanitize``).

The secret scanner itself is the redaction contract's, tested in tests/test_redaction.py."""

from __future__ import annotations

import json

import pytest
from agentao.replay.sanitize import sanitize_event
from test_redaction import OTHER_SHAPES, PER_KIND, agentao_then_more

from producers.scrub import Scrubber
from sinks.archive import map_event
from sinks.archive_store import ArchiveWriter
from sinks.redact import (
    DEFAULT_CAPTURE_FLAGS,
    capture_flags,
    sanitize,
    sanitize_encoded,
    scan_value,
)


@pytest.mark.parametrize("text", [*PER_KIND.values(), *OTHER_SHAPES])
def test_the_archive_scans_with_the_contracts_scanner_like_agentao(text):
    hits: dict[str, int] = {}
    assert (scan_value(text, hits), hits) == agentao_then_more(text)
    row = sanitize("assistant_text_chunk", {"chunk": text, "n": [text]}, DEFAULT_CAPTURE_FLAGS)
    theirs, _stats = sanitize_event("assistant_text_chunk", {"chunk": text, "n": [text]})
    more, more_hits = agentao_then_more(text)
    if more == theirs["chunk"]:  # agentwatch's additions found nothing more: Agentao's row, byte for byte
        assert row == theirs
    else:  # Agentao's row with the additions on top
        doubled = {k: 2 * n for k, n in more_hits.items()}
        assert (row["chunk"], row["n"], row["redaction_hits"]) == (more, [more], doubled)


CAPPED = [
    ("tool_result", {"tool": "t", "call_id": "c", "content": "a" * 3000 + " sk-" + "b" * 30 + " " + "c" * 9000,
                     "content_hash": "sk-" + "d" * 30, "original_chars": 12036, "status": "ok"}),
    ("tool_output_chunk", {"tool": "t", "call_id": "c", "chunk": "e" * 6000 + " api_key=verysecret"}),
    ("ask_user_answered", {"question": "pw?", "answer": "f" * 700}),
    ("memory_write", {"version_before": 1, "value": "g" * 2100, "nested": {"k": ["token: abcdefghij"]}}),
    ("plugin_hook_fired", {"hook_name": "Stop", "output_preview": "h" * 600}),
    ("llm_call_delta", {"added_messages": [{"role": "user", "content": "Authorization: Bearer " + "i" * 30}],
                        "weird": float("nan")}),
]


@pytest.mark.parametrize("flags", [DEFAULT_CAPTURE_FLAGS,
                                   {**DEFAULT_CAPTURE_FLAGS, "capture_tool_result_full": True,
                                    "capture_plugin_hook_output_full": True}])
@pytest.mark.parametrize(("kind", "payload"), CAPPED)
def test_sanitize_matches_agentaos_sanitize_event(kind, payload, flags):
    theirs, _stats = sanitize_event(kind, payload, capture_flags=dict(flags))
    ours = sanitize(kind, payload, flags)
    if kind == "llm_call_delta":  # NaN: Agentao keeps it (then writes invalid JSON); we write a string
        theirs["weird"] = "nan"
    assert ours == theirs
    clean, text = sanitize_encoded(kind, payload, flags)
    assert clean == ours and json.loads(text) == ours


def test_fast_path_gives_the_same_text_as_the_full_sanitiser():
    for payload in ({"chunk": "plain text"}, {"a": [1, 2.5, None, True], "b": {"c": "ünï"}}, {"x": "token here"}):
        clean, text = sanitize_encoded("assistant_text_chunk", payload, DEFAULT_CAPTURE_FLAGS)
        assert text == json.dumps(sanitize("assistant_text_chunk", payload, DEFAULT_CAPTURE_FLAGS),
                                  ensure_ascii=False)


def test_data_scrubbed_by_a_producer_is_not_cut_or_counted_twice():
    """A producer running producers.scrub already redacted and truncated: the archive keeps its result."""
    secret = "sk-" + "Z" * 30
    content = "a" * 3000 + f" {secret} " + "b" * 9000
    data = {"tool": "read_file", "call_id": "c1", "content": content, "content_hash": "f" * 64,
            "original_chars": len(content), "saved_to_disk": False, "disk_path": None, "status": "ok",
            "duration_ms": 3, "error": None}
    scrubbed, hits = Scrubber().scrub_payload("tool_result", dict(data))
    assert hits == {"openai_api_key": 1}
    event = {"event_id": "e" * 32, "event_time": 1, "producer_time": 1, "tenant": "t", "session_id": "s", "seq": 2,
             "type": "tool_result", "payload": json.dumps(scrubbed)}
    (row,) = map_event(event, DEFAULT_CAPTURE_FLAGS)
    ours = sanitize(row.kind, row.payload, DEFAULT_CAPTURE_FLAGS)
    theirs, _ = sanitize_event("tool_result", data)
    assert ours["content"] == theirs["content"]
    assert ours["content_truncation"] == theirs["content_truncation"]
    assert ours["redaction_hits"] == theirs["redaction_hits"] == {"openai_api_key": 1}


def test_footer_totals_are_the_sum_of_the_rows(tmp_path):
    secret_events = []
    for seq, (etype, payload) in enumerate([
            ("session_start", {}), ("turn_begin", {"user_message": "use api_key=abcdefghijk"}),
            ("tool_output", {"tool": "sh", "call_id": "c", "chunk": "x" * 4500}),
            ("llm_text", {"chunk": "AKIAABCDEFGHIJKLMNOP"}), ("turn_end", {"final_text": "password=hunter22"}),
            ("session_end", {})], 1):
        secret_events.append({"event_id": f"{seq:032x}", "event_time": seq, "producer_time": seq, "tenant": "t",
                              "session_id": "s", "seq": seq, "type": etype, "turn_id": "u" if 1 < seq < 6 else None,
                              "payload": json.dumps(payload)})
    with ArchiveWriter(tmp_path) as w:
        for e in secret_events:
            w.add(e)
    rows = [json.loads(line) for line in next(tmp_path.rglob("*.jsonl")).read_text().splitlines()]
    footer = rows[-1]["payload"]
    assert footer["redaction_hits"] == {"aws_access_key": 1, "kv_secret": 2}
    assert footer["truncated_field_hits"] == {"chunk": 1}
    summed: dict[str, int] = {}
    for r in rows[:-1]:
        for k, n in r["payload"].get("redaction_hits", {}).items():
            summed[k] = summed.get(k, 0) + n
    assert summed == footer["redaction_hits"]


def test_unknown_capture_flags_are_refused():
    with pytest.raises(ValueError, match="unknown capture flag"):
        capture_flags({"capture_everything": True})
    with pytest.raises(ValueError, match="true or false"):
        capture_flags({"capture_llm_delta": "yes"})
