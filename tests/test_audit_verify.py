"""Tampering with the audit log: ``verify`` catches each change and names the record or segment and the check."""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import uuid
from pathlib import Path

import pytest

from agentwatch.commands import audit as audit_cmd
from agentwatch.config import Settings
from sinks.audit_classify import Classification
from sinks.audit_format import canonical, seal_record, sign_checkpoint, tenant_dirname
from sinks.audit_log import DAY_US, AuditCorruption, AuditLog
from sinks.audit_verify import verify_root

KEY = b"test-hmac-key-0123456789abcdef"
T0 = 1_750_000_000_000_000
SESSION = Classification("session_start", "session", 365)
DENIAL = Classification("permission_denied", "denial", 90)
N = 30


def ev(i: int, tenant: str = "acme") -> dict[str, object]:
    return {"event_id": uuid.UUID(int=i).hex, "event_time": T0 + i,
            "producer_time": T0 + i, "tenant": tenant, "session_id": f"sess-{i:04d}", "seq": i,
            "type": "session_start", "payload": json.dumps({"pad": "p" * 200})}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """30 session records in several segments (checkpoint every 4 records) and a second stream, closed cleanly."""
    root = tmp_path / "audit"
    with AuditLog(root, KEY, segment_max_bytes=4500, checkpoint_every=4, clock=lambda: T0) as log:
        for i in range(N):
            log.append(ev(i), SESSION)
        for i in range(3):
            log.append(ev(100 + i), DENIAL)
    return root


def stream_dir(root: Path, stream: str = "session", tenant: str = "acme") -> Path:
    return root / tenant_dirname(tenant) / stream


def segments(root: Path) -> list[Path]:
    return sorted(stream_dir(root).glob("seg-*.jsonl"))


def read_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def write_lines(path: Path, lines: list[bytes]) -> None:
    os.chmod(path, 0o600)  # the attacker owns the files
    path.write_bytes(b"".join(lines))


def locate(root: Path, seq: int) -> tuple[Path, int]:
    for seg in segments(root):
        for i, line in enumerate(read_lines(seg)):
            if json.loads(line)["seq"] == seq:
                return seg, i
    raise AssertionError(seq)


def altered(line: bytes) -> bytes:
    """The line with its event's session id changed, hash untouched."""
    sid = json.loads(line)["event"]["session_id"].encode()
    return line.replace(sid, sid[:-1] + (b"X" if sid[-1:] != b"X" else b"Y"))


def errors(root: Path, key: bytes | None = KEY) -> set[tuple[str, str | None, int | None]]:
    report = verify_root(root, key)
    assert not report.ok, report.render()
    return {(f.check, f.segment, f.seq) for f in report.errors}


def test_untouched_log_verifies(root):
    report = verify_root(root, KEY)
    assert report.ok and not report.warnings, report.render()
    session = next(s for s in report.streams if s.stream == "session")
    assert session.records == N and session.segments == len(segments(root)) >= 4
    assert session.head_seq == session.anchored_seq == N


def test_any_single_byte_change_anywhere_is_caught(root):
    files = [p for p in root.rglob("*") if p.is_file() and p.name != ".writer.lock"]
    rng = random.Random(1234)
    for _ in range(150):
        path = rng.choice(files)
        data = bytearray(path.read_bytes())
        pos = rng.randrange(len(data))
        old = data[pos]
        data[pos] = old ^ (1 << rng.randrange(7)) or 0x20
        mode = path.stat().st_mode & 0o777
        os.chmod(path, 0o600)
        path.write_bytes(bytes(data))
        report = verify_root(root, KEY)
        assert not report.ok, f"byte {pos} of {path.relative_to(root)} changed {old:#x}->{data[pos]:#x} unnoticed"
        data[pos] = old
        path.write_bytes(bytes(data))
        os.chmod(path, mode)
    assert verify_root(root, KEY).ok


def test_modified_record_is_named(root):
    seg, i = locate(root, 10)
    lines = read_lines(seg)
    lines[i] = altered(lines[i])
    write_lines(seg, lines)
    assert errors(root) == {("hash_mismatch", seg.name, 10)}


def test_modified_and_rehashed_record_breaks_the_link_to_the_next(root):
    seg, i = locate(root, 10)
    lines = read_lines(seg)
    rec = json.loads(lines[i])
    rec["event"]["session_id"] = "sess-9999"
    _, lines[i] = seal_record({k: v for k, v in rec.items() if k != "hash"})
    write_lines(seg, lines)
    found = errors(root)
    assert ("chain_break", seg.name, 11) in found or ("chain_break", locate(root, 11)[0].name, 11) in found
    assert {c for c, _, _ in found} <= {"chain_break", "checkpoint_mismatch"}


def test_deleted_record_is_named(root):
    seg, i = locate(root, 13)
    lines = read_lines(seg)
    del lines[i]
    write_lines(seg, lines)
    assert ("records_deleted", seg.name, 13) in errors(root)


def test_swapped_records_are_named(root):
    seg, i = locate(root, 14)
    lines = read_lines(seg)
    assert i + 1 < len(lines)
    lines[i], lines[i + 1] = lines[i + 1], lines[i]
    write_lines(seg, lines)
    assert errors(root) == {("reordered", seg.name, 14)}


def test_truncated_last_segment_is_named(root):
    seg = segments(root)[-1]
    lines = read_lines(seg)
    write_lines(seg, lines[:-2])
    assert errors(root) == {("tail_truncated", seg.name, N - 1)}


def test_truncated_middle_segment_is_named(root):
    seg = segments(root)[1]
    lines = read_lines(seg)
    last_seq = json.loads(lines[-1])["seq"]
    write_lines(seg, lines[:-1])
    found = errors(root)
    assert ("segment_truncated", seg.name, last_seq) in found
    assert {c for c, _, _ in found} == {"segment_truncated", "seq_gap"}


def test_segment_cut_mid_record_is_caught(root):
    seg = segments(root)[1]
    data = seg.read_bytes()
    os.chmod(seg, 0o600)
    seg.write_bytes(data[:-40])
    assert ("torn_tail", seg.name, None) in errors(root)


@pytest.mark.parametrize("which", [0, 2, -1])
def test_deleted_segment_is_named(root, which):
    seg = segments(root)[which]
    seg.unlink()
    found = errors(root)
    assert ("missing_segment", seg.name, int(seg.name[4:16])) in found
    assert {c for c, _, _ in found} <= {"missing_segment", "tail_truncated"}


def rewrite_from(root: Path, first_seq: int) -> dict[int, str]:
    """What a writer without the HMAC key can do: change records from ``first_seq`` on and re-hash the chain to the
    end. Returns the new hash of every rewritten seq."""
    head, new_hashes = None, {}
    for seg in segments(root):
        lines = read_lines(seg)
        for i, line in enumerate(lines):
            rec = json.loads(line)
            if rec["seq"] >= first_seq:
                body = {k: v for k, v in rec.items() if k != "hash"}
                body["event"]["user_id"] = "someone-else"
                body["prev_hash"] = head or body["prev_hash"]
                rec, lines[i] = seal_record(body)
                new_hashes[rec["seq"]] = rec["hash"]
            head = rec["hash"]
        write_lines(seg, lines)
    return new_hashes


def test_rewritten_tail_with_recomputed_hashes_is_caught_by_the_signed_heads(root):
    rewrite_from(root, 21)
    found = errors(root)
    assert found and {c for c, _, _ in found} == {"checkpoint_mismatch"}
    assert min(seq for _, _, seq in found if seq is not None) >= 21
    first = min(verify_root(root, KEY).errors, key=lambda f: f.seq or 0)
    assert "were rewritten and re-hashed" in first.message and "between seq 21 and" in first.message


def test_rewritten_tail_and_checkpoints_is_caught_only_with_the_key(root):
    new_hashes = rewrite_from(root, 21)
    cp_path = stream_dir(root) / "checkpoints.jsonl"
    lines = read_lines(cp_path)
    for i, line in enumerate(lines):  # the heads are patched too, the signatures cannot be redone
        cp = json.loads(line)
        if cp["seq"] in new_hashes:
            cp["head_hash"] = new_hashes[cp["seq"]]
            lines[i] = canonical(cp) + b"\n"
    write_lines(cp_path, lines)
    # without the key (explicitly), a rewrite of log and heads is indistinguishable
    assert verify_root(root, None, no_signatures=True).ok
    found = errors(root)
    assert {c for c, _, _ in found} == {"checkpoint_sig"}


def test_forged_checkpoints_without_the_key_are_caught(root):
    cp_path = stream_dir(root) / "checkpoints.jsonl"
    lines = read_lines(cp_path)
    cp = json.loads(lines[-1])
    body = {k: v for k, v in cp.items() if k not in ("sig", "kid")}
    body["head_hash"] = "0" * 64
    _, lines[-1] = sign_checkpoint(b"a-guessed-key-that-is-not-it", body)
    write_lines(cp_path, lines)
    found = errors(root)
    assert ("checkpoint_sig", "checkpoints.jsonl", None) in found


def test_deleted_checkpoint_is_caught(root):
    cp_path = stream_dir(root) / "checkpoints.jsonl"
    lines = read_lines(cp_path)
    del lines[2]
    write_lines(cp_path, lines)
    assert {c for c, _, _ in errors(root)} == {"checkpoint_chain"}


def test_segment_renamed_or_moved_from_another_stream_is_caught(root):
    seg = segments(root)[1]
    seg.rename(seg.with_name("seg-000000000999.jsonl"))
    assert "segment_renamed" in {c for c, _, _ in errors(root)}
    seg.with_name("seg-000000000999.jsonl").rename(seg)
    foreign = sorted(stream_dir(root, "denial").glob("seg-*.jsonl"))[0]
    shutil.copy(foreign, stream_dir(root) / "seg-000000000031.jsonl")
    assert "wrong_stream" in {c for c, _, _ in errors(root)}


def test_legit_prune_passes_but_deleting_live_segments_or_forging_prunes_fails(tmp_path):
    root = tmp_path / "audit"
    now = [T0]
    with AuditLog(root, KEY, clock=lambda: now[0], segment_max_age_s=86_400, checkpoint_every=2) as log:
        for day in range(3):
            now[0] = T0 + day * DAY_US
            for i in range(3):
                log.append(ev(day * 10 + i) | {"event_time": now[0]}, DENIAL)
        now[0] = T0 + 91 * DAY_US  # days 0 and 1 have expired, day 2 has not
        assert [p.segment for p in log.prune()] == ["seg-000000000001.jsonl", "seg-000000000004.jsonl"]
    assert verify_root(root, KEY).ok
    denial = stream_dir(root, "denial")
    live = sorted(denial.glob("seg-*.jsonl"))
    assert [p.name for p in live][0] == "seg-000000000007.jsonl"
    # an attacker deletes a live segment and appends a fake prune record for it (no HMAC key)
    last = live[-1]
    lines = read_lines(last)
    prev = json.loads(lines[-1])
    body = {**{k: v for k, v in prev.items() if k != "hash"}, "seq": prev["seq"] + 1, "prev_hash": prev["hash"],
            "pruned": {"segment": live[0].name, "first_seq": 7, "last_seq": 9, "count": 3,
                       "first_prev_hash": "x", "last_hash": "y"}}
    write_lines(last, [*lines, seal_record(body)[1]])
    live[0].unlink()
    found = errors(root)
    assert ("unsigned_prune", live[0].name, None) in found


def test_cli_verify_exit_codes_and_messages(root, monkeypatch, capsys):
    monkeypatch.setenv("AGENTWATCH_AUDIT_HMAC_KEY", KEY.decode())
    parser = argparse.ArgumentParser()
    audit_cmd.register(parser.add_subparsers())

    def run(*argv: str) -> int:
        args = parser.parse_args(["audit", *argv])
        return args.func(args, Settings.from_env().with_(home=root.parent))

    assert run("verify", "--dir", str(root)) == 0
    assert capsys.readouterr().out.startswith("OK: 1 tenant(s), 2 stream(s)")
    seg, i = locate(root, 7)
    lines = read_lines(seg)
    lines[i] = altered(lines[i])
    write_lines(seg, lines)
    assert run("verify", "--dir", str(root), "--tenant", "acme") == 1
    out = capsys.readouterr().out
    assert out.startswith("FAILED: 1 problem(s)")
    assert f"tenant 'acme' / session / {seg.name} / seq 7: [hash_mismatch]" in out
    assert run("show", "--dir", str(root), "--tenant", "acme", "--class", "permission_denied", "--json") == 0
    shown = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["seq"] for r in shown] == [1, 2, 3] and all(r["class"] == "permission_denied" for r in shown)
    assert canonical(shown[0]["event"]) == canonical(ev(100))


def test_loosened_permissions_are_errors(root):
    seg = segments(root)[0]
    os.chmod(seg, 0o644)
    report = verify_root(root, KEY)
    assert [f.check for f in report.errors] == ["permissions"]
    assert f"t-acme/session/{seg.name} is mode 644" in report.errors[0].message
    os.chmod(seg, 0o400)
    os.chmod(stream_dir(root), 0o750)
    os.chmod(root, 0o755)
    found = {f.message.split(" is mode")[0] for f in verify_root(root, KEY).errors}
    assert found == {str(root), "t-acme/session"}


def test_deleted_checkpoint_file_is_caught_and_the_writer_refuses_to_continue(root):
    (stream_dir(root) / "checkpoints.jsonl").unlink()
    assert errors(root) == {("checkpoint_chain", "checkpoints.jsonl", None)}
    with AuditLog(root, KEY) as log, pytest.raises(AuditCorruption, match="checkpoints were deleted"):
        log.append(ev(500), SESSION)


def test_cut_checkpoints_are_caught_while_later_segments_exist(root):
    cp_path = stream_dir(root) / "checkpoints.jsonl"
    write_lines(cp_path, read_lines(cp_path)[:3])
    found = errors(root)
    assert {c for c, _, _ in found} == {"checkpoint_chain"}
    assert {seg for _, seg, _ in found} == {p.name for p in segments(root)[1:-1]}


def test_rollback_to_an_older_signed_state_needs_an_external_anchor(root):
    """The limit of any self-contained log: cut the newest checkpoints *and* every record after the one that is left,
    and what remains is a consistent older log. Only the records after the last checkpoint say so (a warning); the
    signed heads the report prints are what an external anchor would compare against."""
    before = {s.stream: s.head_sig for s in verify_root(root, KEY).streams}
    cp_path = stream_dir(root) / "checkpoints.jsonl"
    lines = read_lines(cp_path)
    keep = next(i for i, line in enumerate(lines) if json.loads(line)["closed"])  # the first segment's close
    write_lines(cp_path, lines[:keep])
    for seg in segments(root)[1:]:
        seg.unlink()
    report = verify_root(root, KEY)
    assert report.ok and [f.check for f in report.warnings] == ["unanchored"], report.render()
    assert {s.stream: s.head_sig for s in report.streams}["session"] != before["session"]
