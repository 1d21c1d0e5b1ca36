"""``agentwatch replay list|show|tail|prune`` (and rebuild's argument checks), modelled on Agentao's ``/replay``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from test_archive import SID, run_both

from agentwatch.cli import main
from agentwatch.commands.replay import parse_flags, parse_start, progress_bar
from sinks.archive_store import ArchiveWriter

RAW_LINE = re.compile(r"^  #\s*\d+  [a-z_]+\s*( turn=[0-9a-f]{6})?  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """The scripted two-turn session (see test_archive) plus two short sessions in another tenant."""
    run_both(tmp_path)
    root = tmp_path / "archive"
    extra = []
    for n, sid in enumerate(("beef0001-aaaa", "beef0002-bbbb")):
        for seq, etype in enumerate(("session_start", "turn_begin", "turn_end", "session_end"), 1):
            extra.append({"event_id": f"{n}{seq:031x}", "event_time": 1_767_225_600_000_000 + n * 1000 + seq,
                          "producer_time": 0, "tenant": "globex", "session_id": sid, "seq": seq, "type": etype,
                          "turn_id": f"turn-{n}" if etype.startswith("turn") else None, "status": "ok",
                          "payload": json.dumps({"user_message": f"question {n}"} if etype == "turn_begin" else {})})
    with ArchiveWriter(root) as w:
        for e in extra:
            w.add(e)
    return root


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["replay", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def rows_of(archive: Path, session: str) -> list[dict[str, Any]]:
    path = next(p for p in archive.rglob("*.jsonl") if p.name.startswith(session))
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_list_shows_newest_first_with_short_ids(archive, capsys):
    code, out, _ = cli(capsys, "list", "--dir", str(archive), "--utc")
    assert code == 0
    assert "Saved Replays (3):" in out
    ids = re.findall(r"• (\S+)  \[(\w+)\]", out)
    assert [t for _, t in ids].count("globex") == 2
    assert [i.split(".")[0] for i, _ in ids] == ["sess-7f3", "beef0002", "beef0001"]  # newest last event first
    assert "question 1" in out and "deploy it, [REDACTED:kv_secret] please" in out
    assert "45 events · 3 turns  ⚠ has errors" in out and "7 events · 1 turns\n" in out
    assert "File: sess-7f3a." in out
    code, out, _ = cli(capsys, "list", "--dir", str(archive), "--tenant", "globex")
    assert "Saved Replays (2):" in out


def test_show_grouped_view_per_turn_with_llm_rollup(archive, capsys):
    code, out, _ = cli(capsys, "show", SID[:6], "--dir", str(archive), "--utc")
    assert code == 0
    assert out.startswith(f"━━━ Replay {SID}.")
    assert "schema=1.6" in out and "flags=[capture_llm_delta]" in out
    assert "redactions: aws_access_key=2, bearer=1, kv_secret=2, openai_api_key=2" in out
    turns = re.findall(r"━ Turn ([0-9a-f]{6}) ━", out)
    assert len(turns) == 3  # two turns and the sub-agent's
    assert "LLM⚠   2 call(s), p=100 c=20 200ms model=gpt-x finish=tool_calls" in out
    assert "llm_error attempt=2 InternalServerError: Error code: 500" in out
    assert re.search(r"● run_shell_command\s+30ms  id=c1 .*\(truncated, stream-truncated, approved, 12,\d+ chars\)",
                     out)
    assert "drop_table denied" in out and "perm    prompt drop_table mode=workspace-write" in out
    assert "asst   I'll run the tests.Done: tests pass." in out
    assert "└─  ok  incomplete=max_iterations" in out
    assert out.rstrip().endswith("redactions=aws_access_key:2+bearer:1+kv_secret:2+openai_api_key:2, "
                                 "truncated=chunk:1+content:1+output_preview:1+value:1")
    code, out, _ = cli(capsys, "show", SID, "--dir", str(archive), "--errors")
    assert len(re.findall(r"━ Turn [0-9a-f]{6} ━  ⚠ error", out)) == 2
    assert "Session-level events" in out
    code, out, _ = cli(capsys, "show", "beef0001", "--dir", str(archive), "--errors")
    assert "No turns matched (errors)." in out
    first = rows_of(archive, SID)[2]["turn_id"]
    code, out, _ = cli(capsys, "show", SID, "--dir", str(archive), f"--turn={first[:4]}")
    assert re.findall(r"━ Turn ([0-9a-f]{6}) ━", out) == [first[:6]] and "Session-level" not in out


def test_raw_kind_and_tail_views(archive, capsys):
    rows = rows_of(archive, SID)
    code, out, _ = cli(capsys, "show", SID, "--dir", str(archive), "--raw", "--utc")
    lines = out.splitlines()
    assert lines[0] == f"{rows[0]['session_id']}.{rows[0]['instance_id']}  ({len(rows)} event(s))"
    heads = [line for line in lines if line.startswith("  #")]
    assert len(heads) == len(rows) and all(RAW_LINE.match(h) for h in heads)
    assert "    ok finish=tool_calls 120ms p=100 c=20 cached=50 reasoning=5" in out
    code, out, _ = cli(capsys, "show", SID, "--dir", str(archive), "--kind", "tool_c")
    kinds = re.findall(r"#\s*\d+  (\S+)", out)
    assert set(kinds) == {"tool_confirmation_requested", "tool_confirmation_resolved", "tool_completed"}
    code, out, _ = cli(capsys, "tail", SID, "3", "--dir", str(archive))
    assert [int(s) for s in re.findall(r"#\s*(\d+)", out)] == [r["seq"] for r in rows[-3:]]


def test_ids_resolve_by_prefix_and_ambiguity_is_reported(archive, capsys):
    code, _, err = cli(capsys, "show", "beef", "--dir", str(archive))
    assert code == 2 and "Prefix 'beef' is ambiguous — 2 replays match:" in err
    code, _, err = cli(capsys, "show", "nope", "--dir", str(archive))
    assert code == 1 and "No replay matches id 'nope'" in err
    iid = rows_of(archive, "beef0002")[0]["instance_id"]
    code, out, _ = cli(capsys, "tail", iid[:5], "--dir", str(archive))
    assert code == 0 and "beef0002-bbbb." in out


def test_prune_keeps_the_newest_per_tenant(archive, capsys):
    code, out, _ = cli(capsys, "prune", "--dir", str(archive), "--max-instances", "1")
    assert code == 0
    assert out.splitlines()[0] == "Pruned 1 old replay(s)." and "beef0001-aaaa." in out
    code, out, _ = cli(capsys, "prune", "--dir", str(archive), "--max-instances", "1")
    assert out.strip() == "Nothing to prune."


def test_rebuild_refuses_a_non_empty_directory(archive, capsys):
    code, _, err = cli(capsys, "rebuild", "--out", str(archive), "--bootstrap", "127.0.0.1:9")
    assert code == 2 and "is not empty" in err


def test_option_parsing():
    assert parse_flags("capture_full_llm_io, capture_llm_delta=false") == {"capture_full_llm_io": True,
                                                                         "capture_llm_delta": False}
    assert parse_start("earliest") is None
    assert parse_start("2026-01-01T00:00:01Z") == parse_start("2026-01-01T00:00:01") == 1_767_225_601_000
    assert progress_bar(0.5, 50, 100, 1234.4, width=10) == "[#####.....]  50.0%  50/100 records  1,234 events/s"
    with pytest.raises(SystemExit):
        parse_start("yesterday")
