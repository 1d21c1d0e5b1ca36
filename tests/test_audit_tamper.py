"""The tamper matrix beyond single records (see also test_audit_verify.py): seals, forged appends with a recomputed
chain, plaintext inside an encrypted log, rollback with and without an external anchor, segments moved between
tenants or retention classes, replayed old segments, re-signing with another key, modes, empty roots, missing keys.
Every case expects a *named* check (or, for the one thing a self-contained log cannot show, asserts that limit)."""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import uuid
from pathlib import Path

import pytest

from agentwatch.commands import audit as audit_cmd
from agentwatch.config import Settings
from sinks.audit_anchor import AnchorPublisher, FileWitness
from sinks.audit_classify import Classification
from sinks.audit_format import seal_record, sign_checkpoint, tenant_dirname
from sinks.audit_log import AuditLog, AuditTailUnconfirmed
from sinks.audit_verify import check_anchors, verify_root

KEY = b"test-hmac-key-0123456789abcdef"
OTHER_KEY = b"another-hmac-key-0123456789abcd"
ENC = bytes(range(32))
T0 = 1_750_000_000_000_000
SESSION = Classification("session_start", "session", 365)
DENIAL = Classification("permission_denied", "denial", 90)


def ev(i: int, tenant: str = "acme") -> dict[str, object]:
    return {"event_id": uuid.UUID(int=i).hex, "event_time": T0 + i, "producer_time": T0 + i, "tenant": tenant,
            "session_id": f"sess-{i:04d}", "seq": i, "type": "session_start",
            "payload": json.dumps({"pad": "p" * 200})}


def write_log(root: Path, anchors: Path | None = None, *, first: int = 0, n: int = 30, enc_key: bytes | None = None,
              tenants: tuple[str, ...] = ("acme",), close: bool = True) -> AuditLog:
    """n session records per tenant (checkpoint every 4, several segments) and 3 denials; sealed on close."""
    pub = AnchorPublisher(FileWitness(anchors)) if anchors is not None else None
    log = AuditLog(root, KEY, enc_key=enc_key, segment_max_bytes=4500, checkpoint_every=4, clock=lambda: T0,
                   on_checkpoint=pub.publish if pub else None)
    for tenant in tenants:
        for i in range(first, first + n):
            log.append(ev(i, tenant), SESSION)
        for i in range(first, first + 3):
            log.append(ev(1000 + i, tenant), DENIAL)
    if close:
        log.close()
        if pub is not None:
            assert pub.close()
    elif pub is not None:
        assert pub.flush()
    return log


def sdir(root: Path, stream: str = "session", tenant: str = "acme") -> Path:
    return root / tenant_dirname(tenant) / stream


def segments(root: Path, stream: str = "session", tenant: str = "acme") -> list[Path]:
    return sorted(sdir(root, stream, tenant).glob("seg-*.jsonl"))


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def put(path: Path, lines: list[bytes]) -> None:
    os.chmod(path, 0o600)
    path.write_bytes(b"".join(lines))
    os.chmod(path, 0o600)


def checks(report) -> set[str]:
    return {f.check for f in report.errors}


def forge_append(seg: Path, **changes: object) -> dict:
    """What anyone with write access can do without a key: append a record and recompute its chain link."""
    last = json.loads(lines_of(seg)[-1])
    body = {k: v for k, v in last.items() if k != "hash"}
    body.update(seq=last["seq"] + 1, prev_hash=last["hash"], event_id="f" * 32, **changes)
    if "event" in body:
        body["event"] = {**body["event"], "event_id": "f" * 32, "user_id": "mallory"}
    rec, line = seal_record(body)
    put(seg, [*lines_of(seg), line])
    return rec


# -- seal: forged appends on a cleanly stopped log ----------------------------------------------------------------

def test_clean_close_seals_every_stream_and_verifies_without_warnings(tmp_path):
    write_log(tmp_path / "a")
    report = verify_root(tmp_path / "a", KEY)
    assert report.ok and not report.warnings, report.render()
    assert all(s.sealed and s.head_seq == s.anchored_seq for s in report.streams)


def test_forged_record_with_recomputed_chain_after_a_clean_close_is_an_error(tmp_path):
    root = tmp_path / "a"
    write_log(root)
    seg = segments(root)[-1]
    forge_append(seg)
    report = verify_root(root, KEY)
    assert checks(report) == {"appended_after_seal"}
    [err] = report.errors
    assert (err.segment, err.seq) == (seg.name, 31) and "seq 31..31" in err.message
    # and the next writer refuses to chain onto it, let alone sign over it
    with pytest.raises(AuditTailUnconfirmed, match="appended after the stream was sealed"):
        with AuditLog(root, KEY) as log:
            log.append(ev(500), SESSION)
    assert checks(verify_root(root, KEY)) == {"appended_after_seal"}


def test_a_later_writer_continues_a_sealed_stream_legitimately(tmp_path):
    root = tmp_path / "a"
    write_log(root)
    write_log(root, first=100, n=5)  # second run: unseals (signed), appends, seals again
    report = verify_root(root, KEY)
    assert report.ok and not report.warnings, report.render()
    assert {s.stream: s.head_seq for s in report.streams} == {"session": 35, "denial": 6}


def test_forged_record_while_the_writer_runs_or_after_a_crash_is_refused_by_the_next_writer(tmp_path):
    """An unsealed tail is a warning for verify (the writer is live or crashed), and never signed unconfirmed."""
    root = tmp_path / "a"
    log = write_log(root, close=False)
    log.flush()
    [anchored] = [s.anchored_seq for s in verify_root(root, KEY).streams if s.stream == "session"]
    seg = segments(root)[-1]
    forge_append(seg)
    report = verify_root(root, KEY)
    assert report.ok and {f.check for f in report.warnings} == {"unanchored"}
    assert "is running (pid" in next(f for f in report.warnings).message
    # the writer is killed (simulated: its lock released without close, so nothing is sealed)
    os.close(log._lock_fd)
    report = verify_root(root, KEY)
    assert "crashed or was killed" in next(f for f in report.warnings).message
    with pytest.raises(AuditTailUnconfirmed, match="no source topic was given"):
        with AuditLog(root, KEY) as again:
            again.append(ev(600), SESSION)
    assert [s.anchored_seq for s in verify_root(root, KEY).streams if s.stream == "session"] == [anchored]
    assert anchored < 31  # the forged seq 31 was never signed


# -- encryption: plaintext records inside an encrypted log -----------------------------------------------------------

def test_plaintext_record_inside_an_encrypted_log_is_an_error(tmp_path):
    root = tmp_path / "a"
    log = write_log(root, enc_key=ENC, close=False)
    log.flush()
    os.close(log._lock_fd)  # a crashed writer: the tail is unsealed, so only the plaintext check can object
    seg = segments(root)[-1]
    forged = {k: v for k, v in json.loads(lines_of(seg)[-1]).items() if k not in ("enc", "hash")}
    forged["event"] = ev(777)
    put(seg, [*lines_of(seg), seal_record({**forged, "seq": forged["seq"] + 1,
                                            "prev_hash": json.loads(lines_of(seg)[-1])["hash"]})[1]])
    report = verify_root(root, KEY)
    assert checks(report) == {"plaintext_record"}, report.render()
    assert report.errors[0].seq == 31


def test_a_writer_without_the_key_refuses_to_add_plaintext_to_an_encrypted_stream(tmp_path):
    root = tmp_path / "a"
    write_log(root, enc_key=ENC)
    with AuditLog(root, KEY) as log, pytest.raises(Exception, match="log is encrypted and this writer has no key"):
        log.append(ev(900), SESSION)


# -- rollback -------------------------------------------------------------------------------------------------------

def roll_back(root: Path, keep_checkpoints: int) -> None:
    """Cut the session stream back to its state at checkpoint ``keep_checkpoints``: later checkpoints and every
    record after the one it signed are removed. A consistent older log remains."""
    cp_path = sdir(root) / "checkpoints.jsonl"
    cps = lines_of(cp_path)[:keep_checkpoints]
    head = json.loads(cps[-1])["seq"]
    put(cp_path, cps)
    for seg in segments(root):
        kept = [line for line in lines_of(seg) if json.loads(line)["seq"] <= head]
        if kept:
            put(seg, kept)
        else:
            seg.unlink()


def test_rollback_without_an_anchor_is_not_detectable_and_with_one_it_is(tmp_path):
    root, anchors = tmp_path / "a", tmp_path / "witness" / "anchors.jsonl"
    anchors.parent.mkdir()
    write_log(root, anchors)
    roll_back(root, 5)  # checkpoints 1..5 (seq 0, 4, 8, 12 (closed), 16) of 30 records
    report = verify_root(root, KEY)
    # The limit of a self-contained log: what is left is consistent (it looks like a crash after seq 16).
    assert report.ok and {f.check for f in report.warnings} <= {"unanchored"}, report.render()
    found = check_anchors(report, FileWitness(anchors).read(), KEY)
    assert [(f.check, f.stream) for f in found if f.severity == "error"] == [("anchor_rollback", "session")]
    assert "witness saw checkpoint" in found[0].message and "rollback" in found[0].message


def test_rollback_to_an_older_sealed_state_is_caught_by_the_anchor(tmp_path):
    root, anchors = tmp_path / "a", tmp_path / "anchors.jsonl"
    write_log(root, anchors)
    snapshot = tmp_path / "snapshot"
    shutil.copytree(root, snapshot)  # the state after run 1, sealed
    write_log(root, anchors, first=100, n=10)  # run 2 adds records and seals again
    shutil.rmtree(root)
    shutil.copytree(snapshot, root)  # the whole log replaced by the older, perfectly valid, sealed copy
    report = verify_root(root, KEY)
    assert report.ok and not report.warnings  # nothing local can tell
    found = check_anchors(report, FileWitness(anchors).read(), KEY)
    assert {(f.check, f.stream) for f in found} == {("anchor_rollback", "session"), ("anchor_rollback", "denial")}


def test_deleted_stream_directory_and_forged_anchor_are_named(tmp_path):
    root, anchors = tmp_path / "a", tmp_path / "anchors.jsonl"
    write_log(root, anchors)
    shutil.rmtree(sdir(root, "denial"))
    report = verify_root(root, KEY)
    assert report.ok
    found = check_anchors(report, FileWitness(anchors).read(), KEY)
    assert [(f.check, f.stream) for f in found] == [("anchor_rollback", "denial")]
    assert "stream missing" in found[0].message
    # an attacker cannot feed the verifier a witness entry of their own making
    cp = json.loads(lines_of(anchors)[-1])
    fake, _ = sign_checkpoint(OTHER_KEY, {k: v for k, v in cp.items() if k not in ("sig", "kid")} | {"n": 999})
    assert [f.check for f in check_anchors(report, [fake], KEY)] == ["anchor_sig", "not_anchored"]


# -- segments moved, replayed; history re-signed ----------------------------------------------------------------------

def test_segment_moved_between_tenants_is_named(tmp_path):
    root = tmp_path / "a"
    write_log(root, tenants=("acme", "globex"))
    mine, theirs = segments(root)[1], segments(root, tenant="globex")[1]
    os.chmod(mine, 0o600)
    shutil.copy(theirs, mine)  # same name, same seqs, another tenant's chain
    found = checks(verify_root(root, KEY))
    assert "wrong_stream" in found and found <= {"wrong_stream", "chain_break", "checkpoint_mismatch"}


def test_segment_moved_between_retention_classes_is_named(tmp_path):
    root = tmp_path / "a"
    write_log(root)
    denial = segments(root, "denial")[0]
    os.chmod(segments(root)[0], 0o600)
    shutil.copy(denial, segments(root)[0])  # the denial records (seq 1..3) dressed as the session stream's first
    found = checks(verify_root(root, KEY))
    assert "wrong_stream" in found


def test_tenant_directory_renamed_to_another_tenant_is_named(tmp_path):
    root = tmp_path / "a"
    write_log(root, tenants=("acme", "globex"))
    shutil.rmtree(root / tenant_dirname("globex"))
    (root / tenant_dirname("acme")).rename(root / tenant_dirname("globex"))
    assert "tenant_dir" in checks(verify_root(root, KEY))


def test_replayed_old_copy_of_a_segment_is_named(tmp_path):
    root = tmp_path / "a"
    write_log(root, n=6)
    seg = segments(root)[-1]
    old = seg.read_bytes()  # the open segment as it was after run 1
    write_log(root, first=100, n=2)  # run 2 appends to the same open segment
    assert seg.read_bytes().startswith(old) and seg.read_bytes() != old
    put(seg, [old])  # the old copy is put back
    report = verify_root(root, KEY)
    assert checks(report) == {"tail_truncated"}, report.render()


def test_history_rewritten_and_re_signed_with_another_key_is_named(tmp_path):
    root, anchors = tmp_path / "a", tmp_path / "anchors.jsonl"
    write_log(root, anchors)
    # the attacker rebuilds the whole session stream from scratch with altered events and their own key
    forged = tmp_path / "forged"
    with AuditLog(forged, OTHER_KEY, segment_max_bytes=4500, checkpoint_every=4, clock=lambda: T0) as log:
        for i in range(30):
            log.append({**ev(i), "user_id": "mallory"}, SESSION)
    shutil.rmtree(sdir(root))
    shutil.copytree(sdir(forged), sdir(root))
    report = verify_root(root, KEY)
    assert checks(report) == {"checkpoint_sig"}
    assert "signed with key" in report.errors[0].message
    assert {f.check for f in check_anchors(report, FileWitness(anchors).read(), KEY)} == {"anchor_mismatch"}


# -- modes, roots, keys ---------------------------------------------------------------------------------------------

def test_empty_and_missing_roots_are_errors(tmp_path):
    (tmp_path / "empty").mkdir(mode=0o700)
    assert checks(verify_root(tmp_path / "empty", KEY)) == {"empty_root"}
    assert checks(verify_root(tmp_path / "nowhere", KEY)) == {"missing_root"}


def test_missing_hmac_key_is_an_error_unless_explicitly_waived(tmp_path):
    write_log(tmp_path / "a")
    assert checks(verify_root(tmp_path / "a", None)) == {"no_key"}
    report = verify_root(tmp_path / "a", None, no_signatures=True)
    assert report.ok and [f.check for f in report.warnings] == ["no_key"]


def test_foreign_hmac_key_is_named(tmp_path):
    write_log(tmp_path / "a")
    report = verify_root(tmp_path / "a", OTHER_KEY)
    assert checks(report) == {"checkpoint_sig"} and "not the given key" in report.errors[0].message


def cli(monkeypatch, tmp_path: Path, *argv: str, env: dict[str, str | None]) -> int:
    for name in ("AGENTWATCH_AUDIT_HMAC_KEY", "AGENTWATCH_AUDIT_ENC_KEY", "AGENTWATCH_AUDIT_ANCHORS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        if value is not None:
            monkeypatch.setenv(name, value)
    parser = argparse.ArgumentParser()
    audit_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["audit", *argv])
    return args.func(args, Settings.from_env().with_(home=tmp_path, bootstrap_servers="127.0.0.1:9"))


def test_cli_refuses_what_it_cannot_check_with_one_clear_line(tmp_path, monkeypatch, capsys):
    root = tmp_path / "a"
    write_log(root, enc_key=ENC)
    enc = base64.b64encode(ENC).decode()
    hmac = KEY.decode()
    assert cli(monkeypatch, tmp_path, "verify", "--dir", str(root), env={}) == 1
    assert "[no_key]" in capsys.readouterr().out
    assert cli(monkeypatch, tmp_path, "verify", "--dir", str(root), "--no-signatures", env={}) == 0
    capsys.readouterr()
    assert cli(monkeypatch, tmp_path, "verify", "--dir", str(root), "--decrypt",
               env={"AGENTWATCH_AUDIT_HMAC_KEY": hmac}) == 2
    err = capsys.readouterr().err.strip()
    assert err == "audit verify --decrypt: set AGENTWATCH_AUDIT_ENC_KEY (the key the log was encrypted with)"
    assert cli(monkeypatch, tmp_path, "verify", "--dir", str(root), "--decrypt",
               env={"AGENTWATCH_AUDIT_HMAC_KEY": hmac, "AGENTWATCH_AUDIT_ENC_KEY": enc}) == 0
    capsys.readouterr()
    wrong = base64.b64encode(bytes(32)).decode()
    assert cli(monkeypatch, tmp_path, "verify", "--dir", str(root), "--decrypt",
               env={"AGENTWATCH_AUDIT_HMAC_KEY": hmac, "AGENTWATCH_AUDIT_ENC_KEY": wrong}) == 1
    assert "[decrypt_failed]" in capsys.readouterr().out
    os.chmod(segments(root)[0], 0o640)
    assert cli(monkeypatch, tmp_path, "verify", "--dir", str(root), env={"AGENTWATCH_AUDIT_HMAC_KEY": hmac}) == 1
    assert f"t-acme/session/{segments(root)[0].name} is mode 640" in capsys.readouterr().out
    (tmp_path / "empty").mkdir(mode=0o700)
    assert cli(monkeypatch, tmp_path, "verify", "--dir", str(tmp_path / "empty"),
               env={"AGENTWATCH_AUDIT_HMAC_KEY": hmac}) == 1
    assert "[empty_root]" in capsys.readouterr().out


def test_audit_run_refuses_to_store_plaintext_unless_told(tmp_path, monkeypatch, capsys):
    rc = cli(monkeypatch, tmp_path, "run", "--dir", str(tmp_path / "a"), "--until-end",
             env={"AGENTWATCH_AUDIT_HMAC_KEY": KEY.decode()})
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "set AGENTWATCH_AUDIT_ENC_KEY" in err and "--insecure-plaintext" in err
    assert not (tmp_path / "a").exists()


def test_audit_prune_refuses_a_rolled_back_log(tmp_path, monkeypatch, capsys):
    root, anchors = tmp_path / "a", tmp_path / "anchors.jsonl"
    write_log(root, anchors)
    roll_back(root, 5)
    env = {"AGENTWATCH_AUDIT_HMAC_KEY": KEY.decode(), "AGENTWATCH_AUDIT_ANCHORS": f"file:{anchors}"}
    assert cli(monkeypatch, tmp_path, "prune", "--dir", str(root), env=env) == 1
    err = capsys.readouterr().err
    assert err.startswith("audit: ") and "anchors witness saw checkpoint" in err and "rolled back" in err


def test_an_unsigned_prune_record_is_signed_only_if_it_is_the_writers_own(tmp_path, monkeypatch):
    from sinks import audit_log as audit_log_module
    from sinks.audit_log import DAY_US

    def setup(root: Path) -> AuditLog:
        now = [T0]
        log = AuditLog(root, KEY, clock=lambda: now[0], segment_max_age_s=86_400, checkpoint_every=2)
        for day in range(3):
            now[0] = T0 + day * DAY_US
            for i in range(3):
                log.append(ev(day * 10 + i) | {"event_time": now[0]}, DENIAL)
        now[0] = T0 + 91 * DAY_US  # days 0 and 1 have expired
        return log

    # a crash between recording a prune in the chain and signing the prune checkpoint: the restart accepts it
    log = setup(tmp_path / "crash")
    real = audit_log_module.AuditLog._write_checkpoint

    def crash_on_prune(self, s, body):
        if body["kind"] == "prune":
            raise KeyboardInterrupt("killed")
        return real(self, s, body)

    monkeypatch.setattr(audit_log_module.AuditLog, "_write_checkpoint", crash_on_prune)
    with pytest.raises(KeyboardInterrupt):
        log.prune()
    monkeypatch.undo()
    os.close(log._lock_fd)  # killed: nothing sealed
    with AuditLog(tmp_path / "crash", KEY, clock=lambda: T0 + 91 * DAY_US) as again:
        assert again.recover() == {}
        again.prune()
    report = verify_root(tmp_path / "crash", KEY)
    assert report.ok and not report.warnings, report.render()

    # a forged prune record (correct chain, exact declaration of a live segment that has not expired): refused
    log = setup(tmp_path / "forged")
    log.flush()
    os.close(log._lock_fd)
    seg_dir = sdir(tmp_path / "forged", "denial")
    live = sorted(seg_dir.glob("seg-*.jsonl"))
    last_seg = live[-1]
    victim = [json.loads(line) for line in lines_of(live[-2])]
    tail = json.loads(lines_of(last_seg)[-1])
    decl = {"segment": live[-2].name, "first_seq": victim[0]["seq"], "last_seq": victim[-1]["seq"],
            "count": len(victim), "first_prev_hash": victim[0]["prev_hash"], "last_hash": victim[-1]["hash"]}
    body = {"v": 1, "kind": "segment_pruned", "tenant": "acme", "stream": "denial", "seq": tail["seq"] + 1,
            "event_id": None, "class": "segment_pruned", "retention": "denial", "expires_at": T0,
            "recorded_at": T0 + 1, "pruned": decl, "prev_hash": tail["hash"]}
    put(last_seg, [*lines_of(last_seg), seal_record(body)[1]])
    with AuditLog(tmp_path / "forged", KEY) as again:
        refused = again.recover()
    assert set(refused) == {"acme"} and "had not expired when the prune was recorded" in str(refused["acme"])


def test_verify_confirm_tails_names_the_forged_record_of_a_crashed_writer(tmp_path):
    from sinks.audit_verify import confirm_tails

    root = tmp_path / "a"
    topic: dict[tuple[str, int, int], list[dict]] = {}
    log = AuditLog(root, KEY, checkpoint_every=8, segment_max_bytes=4500, clock=lambda: T0)
    for i in range(30):
        topic[("ev", 0, i)] = [ev(i)]
        log.append(ev(i), SESSION, ("ev", 0, i))
    log.flush()
    os.close(log._lock_fd)  # crashed: seq 25..30 unanchored
    forge_append(segments(root)[-1], src={"topic": "ev", "partition": 0, "offset": 29})  # re-uses a real offset

    class Topic:
        def fetch(self, refs):
            return {r: topic[r] for r in refs if r in topic}

    report = verify_root(root, KEY)
    assert report.ok and [s.head_seq - s.anchored_seq for s in report.streams] == [6]
    found = confirm_tails(report, Topic(), None)
    assert [(f.check, f.seq) for f in found] == [("unconfirmed_record", 31)]
    assert "holds no event ffffffffffffffffffffffffffffffff" in found[0].message
