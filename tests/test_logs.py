"""Per-tenant structured logs without Kafka: the line (sinks.logs) and the files (sinks.logs_store): rotation across a
day boundary with an injected clock, gzip, retention, scrubbing, hostile tenant names, exactly-once after crashes."""

from __future__ import annotations

import gzip
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from producers.scrub import Scrubber
from sinks.archive import tenant_dirname
from sinks.logs import day_of, level_of, log_record, parse_log_name, position_of_line, rfc3339
from sinks.logs_store import LogsLocked, LogWriter

US = 1_000_000
DEC7 = 1_796_601_600  # 2026-12-07T00:00:00Z
SECRET = "sk-proj-" + "A1b2C3d4E5f6G7h8I9j0" * 2
AWS = "AKIAIOSFODNN7EXAMPLE"


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def ev(t_s: float, *, tenant: str = "acme", seq: int = 1, type: str = "tool_start", **kw: Any) -> dict[str, Any]:
    e = {"event_id": uuid.uuid4().hex, "schema_version": 3, "event_time": int(t_s * US),
         "producer_time": int(t_s * US), "tenant": tenant, "session_id": "s-1", "seq": seq, "type": type,
         "user_id": "u-7", "turn_id": "t-1", "tool_name": "run_shell_command", "call_id": "c-1",
         "payload": json.dumps({"args": {"command": "echo hi"}}), "evidence": None, "status": None}
    e.update(kw)
    return e


def read_lines(root: Path, tenant: str = "acme") -> list[dict[str, Any]]:
    """Every line of a tenant's files, live and gzipped, in file name order."""
    out = []
    tdir = root / tenant_dirname(tenant)
    for name in sorted(os.listdir(tdir)):
        if parse_log_name(name) is None:
            continue
        opener = gzip.open if name.endswith(".gz") else open
        with opener(tdir / name, "rb") as fh:
            out += [json.loads(line) for line in fh]
    return out


# -- the line ------------------------------------------------------------------------------------------------------


def test_line_has_the_seeds_essential_fields_and_rfc3339_times() -> None:
    e = ev(DEC7 + 3723.25, type="tool_complete", status="error", error_class="OSError", duration_ms=12)
    rec, _ = log_record(e, Scrubber(), (2, 40, 0))
    assert list(rec)[:6] == ["ts", "level", "event_type", "tenant_id", "session_id", "user_id"]
    assert rec["ts"] == "2026-12-07T01:02:03.250000Z"
    assert (rec["event_type"], rec["tenant_id"], rec["session_id"], rec["user_id"]) == \
        ("tool_complete", "acme", "s-1", "u-7")
    assert rec["level"] == "error"
    assert rec["data"] == {"tool_name": "run_shell_command", "call_id": "c-1", "status": "error",
                           "error_class": "OSError", "duration_ms": 12, "args": {"command": "echo hi"}}
    assert "evidence" not in json.dumps(rec) and list(rec)[-1] == "kafka_position"


def test_times_and_days_are_utc_and_never_fail() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00.000000Z"
    assert day_of(DEC7 * US - 1) == "2026-12-06" and day_of(DEC7 * US) == "2026-12-07"
    assert rfc3339(-5) == "1970-01-01T00:00:00.000000Z" and day_of(1 << 62) == "9999-12-31"
    assert day_of("garbage") == "1970-01-01"  # type: ignore[arg-type]


def test_log_events_keep_their_level() -> None:
    assert level_of({"type": "log"}, {"level": "WARNING"}) == "warning"
    assert level_of({"type": "log"}, {"level": "nonsense"}) == "info"
    assert level_of({"type": "llm_call_completed", "status": "ok"}, None) == "info"


def test_secrets_in_tool_arguments_and_free_text_are_scrubbed() -> None:
    payload = json.dumps({"args": {"command": f"curl -H 'Authorization: Bearer {SECRET}' x", "key": AWS}})
    e = ev(DEC7, payload=payload, error_message=f"failed with key {SECRET}")
    rec, n = log_record(e, Scrubber(), None)
    text = json.dumps(rec)
    assert SECRET not in text and AWS not in text and n >= 3
    assert "[REDACTED:" in rec["data"]["args"]["command"] and rec["data"]["redaction_hits"]


def test_a_payload_that_is_not_an_object_is_kept_scrubbed() -> None:
    rec, _ = log_record(ev(DEC7, payload=f"not json {SECRET}"), Scrubber(), None)
    assert rec["data"]["payload_text"].startswith("not json [REDACTED:")


def test_position_is_read_back_from_the_line_end() -> None:
    tricky = ev(DEC7, payload=json.dumps({"x": ',"kafka_position":[9,9,9]}'}))
    from sinks.logs import encode_line

    line = encode_line(log_record(tricky, Scrubber(), (1, 123456789, 3))[0])
    assert position_of_line(line) == (1, 123456789, 3)
    assert position_of_line(b'{"a":1}\n') is None


# -- the files -----------------------------------------------------------------------------------------------------


def test_rotation_across_a_day_boundary_gzip_and_retention(tmp_path: Path) -> None:
    clock = Clock(DEC7 + 86_400 - 60)  # 2026-12-07T23:59
    w = LogWriter(tmp_path, clock=clock, retention_days=3, grace_s=600, fsync=False, maintain_every_s=0)
    w.add(ev(DEC7 + 86_400 - 30, seq=1), (0, 0, 0))
    w.add(ev(DEC7 + 86_400 + 5, seq=2), (0, 1, 0))  # 00:00:05 on the 8th: the next day's file
    w.flush()
    tdir = tmp_path / "t-acme"
    assert sorted(os.listdir(tdir)) == ["2026-12-07.jsonl", "2026-12-08.jsonl"]
    clock.t = DEC7 + 86_400 + 601  # grace over: the 7th is closed and gzipped
    w.add(ev(DEC7 + 86_400 + 500, seq=3), (0, 2, 0))
    w.flush()
    assert sorted(os.listdir(tdir)) == ["2026-12-07.1.jsonl.gz", "2026-12-08.jsonl"]
    w.add(ev(DEC7 + 100, seq=4), (0, 3, 0))  # a late event for the 7th: a new live file...
    w.flush()
    assert sorted(os.listdir(tdir)) == ["2026-12-07.1.jsonl.gz", "2026-12-07.jsonl", "2026-12-08.jsonl"]
    clock.t += 600  # ...gzipped in turn once idle for the grace period
    w.maintain()
    assert sorted(os.listdir(tdir)) == ["2026-12-07.1.jsonl.gz", "2026-12-07.2.jsonl.gz", "2026-12-08.jsonl"]
    assert [r["seq"] for r in read_lines(tmp_path)] == [1, 4, 2, 3]
    clock.t = DEC7 + 3 * 86_400 + 10  # the 10th: keeps 8, 9, 10
    w.maintain(force=True)
    assert sorted(os.listdir(tdir)) == ["2026-12-08.1.jsonl.gz"]
    assert w.stats.pruned == 2 and w.stats.compressed == 3
    assert not w.add(ev(DEC7 + 10, seq=5), (0, 4, 0)) and w.stats.expired == 1  # past retention: not written
    w.close()


def test_default_retention_is_fourteen_days(tmp_path: Path) -> None:
    clock = Clock(DEC7)
    w = LogWriter(tmp_path, clock=clock, fsync=False, maintain_every_s=0)
    for day in range(20):
        w.add(ev(DEC7 - day * 86_400 + 10, seq=day + 1), (0, day, 0))
    w.flush()
    assert w.stats.expired == 6
    days = sorted({parse_log_name(n)[0] for n in os.listdir(tmp_path / "t-acme")})  # type: ignore[index]
    assert len(days) == 14 and days[0] == "2026-11-24" and days[-1] == "2026-12-07"
    w.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=300) | st.sampled_from(["..", ".", "../../etc/passwd", "/abs", "a\x00b", "CON", "~", "t-x",
                                                  "\udcff", "%2e%2e", " "]))
def test_any_tenant_string_stays_inside_the_root(tmp_path: Path, tenant: str) -> None:
    root = tmp_path / uuid.uuid4().hex
    w = LogWriter(root, clock=Clock(DEC7), fsync=False)
    w.add(ev(DEC7, tenant=tenant), (0, 0, 0))
    w.flush()
    w.close()
    (tdir,) = [p for p in root.iterdir() if p.is_dir()]
    assert tdir.parent == root and tdir.name == tenant_dirname(tenant) and len(tdir.name) < 200
    (line,) = read_lines(root, tenant)
    assert line["tenant_id"] == tenant


def test_one_writer_per_directory(tmp_path: Path) -> None:
    w = LogWriter(tmp_path, clock=Clock(DEC7), fsync=False)
    with pytest.raises(LogsLocked):
        LogWriter(tmp_path, clock=Clock(DEC7), fsync=False)
    w.close()


def crash(w: LogWriter) -> None:
    """What SIGKILL leaves: unflushed lines gone, the lock released, nothing else done."""
    os.close(w._lock_fd)
    w._lock_fd = -1


def test_redelivery_after_a_crash_writes_nothing_twice_and_a_torn_line_is_cut(tmp_path: Path) -> None:
    events = [ev(DEC7 + i, seq=i + 1) for i in range(10)]
    w = LogWriter(tmp_path, clock=Clock(DEC7 + 60), fsync=False)
    for i in range(6):
        w.add(events[i], (0, i, 0))
    w.flush()
    for i in range(6, 8):
        w.add(events[i], (0, i, 0))  # buffered, lost in the crash
    crash(w)
    live = tmp_path / "t-acme" / "2026-12-07.jsonl"
    with open(live, "ab") as fh:
        fh.write(b'{"ts":"torn')  # a crash mid-write
    w = LogWriter(tmp_path, clock=Clock(DEC7 + 60), fsync=False)
    for i in range(3, 10):  # the broker re-delivers from the last commit (3)
        w.add(events[i], (0, i, 0))
    w.flush()
    assert [r["seq"] for r in read_lines(tmp_path)] == list(range(1, 11))
    assert (w.stats.present, w.stats.repaired) == (3, 1)
    w.close()


def test_a_crash_during_compression_is_finished_on_start(tmp_path: Path) -> None:
    w = LogWriter(tmp_path, clock=Clock(DEC7 + 60), fsync=False)
    for i in range(3):
        w.add(ev(DEC7 + i, seq=i + 1), (0, i, 0))
    w.flush()
    w.close()
    tdir = tmp_path / "t-acme"
    os.rename(tdir / "2026-12-07.jsonl", tdir / "2026-12-07.1.jsonl")  # crashed after the rename...
    (tdir / "2026-12-07.1.jsonl.gz.tmp").write_bytes(b"\x1f\x8b half")  # ...while gzipping
    w = LogWriter(tmp_path, clock=Clock(DEC7 + 60), fsync=False)
    assert sorted(os.listdir(tdir)) == ["2026-12-07.1.jsonl.gz"]
    assert not w.add(ev(DEC7 + 1, seq=2), (0, 1, 0))  # watermarks come from the gzipped segment too
    assert w.add(ev(DEC7 + 3, seq=4), (0, 3, 0))
    w.close()
    assert [r["seq"] for r in read_lines(tmp_path)] == [1, 2, 3, 4]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_crash_schedule_gives_every_event_exactly_once(tmp_path: Path, data: st.DataObject) -> None:
    """Events of three tenants over two days in two partitions (batched records too), consumed in batches; after
    each batch the process may crash before or after the flush; a restart re-delivers from the last commit."""
    root = tmp_path / uuid.uuid4().hex
    n = data.draw(st.integers(1, 40))
    records: dict[int, list[list[dict[str, Any]]]] = {0: [], 1: []}
    for k in range(n):
        p = data.draw(st.integers(0, 1))
        size = data.draw(st.integers(1, 3))
        records[p].append([ev(DEC7 - 86_400 + data.draw(st.integers(0, 2 * 86_400 - 1)),
                              tenant=data.draw(st.sampled_from(["a", "b", "../c"])), seq=k * 10 + j)
                           for j in range(size)])
    committed = {0: 0, 1: 0}
    clock = Clock(DEC7 + 3600)
    w = LogWriter(root, clock=clock, fsync=False, grace_s=0, maintain_every_s=0)
    for _round in range(200):
        if all(committed[p] >= len(records[p]) for p in records):
            break
        p = data.draw(st.sampled_from([q for q in records if committed[q] < len(records[q])]))
        start = committed[p]
        end = min(len(records[p]), start + data.draw(st.integers(1, 4)))
        for off in range(start, end):
            for i, e in enumerate(records[p][off]):
                w.add(e, (p, off, i))
        fate = data.draw(st.sampled_from(["commit", "crash_before_flush", "crash_after_flush"]))
        if fate != "crash_before_flush":
            w.flush()
        if fate == "commit":
            committed[p] = end
        else:
            crash(w)
            w = LogWriter(root, clock=clock, fsync=False, grace_s=0, maintain_every_s=0)
    for p in records:  # the rest, without crashes
        for off in range(committed[p], len(records[p])):
            for i, e in enumerate(records[p][off]):
                w.add(e, (p, off, i))
    w.close()
    want = sorted(e["event_id"] for p in records for rec in records[p] for e in rec)
    got = sorted(r["event_id"] for t in ["a", "b", "../c"] if (root / tenant_dirname(t)).exists()
                 for r in read_lines(root, t))
    assert got == want


_FULL_DISK = """
import json, resource, signal, sys
from sinks.logs_store import LogsFull, LogWriter
sys.path.insert(0, sys.argv[3])
from test_logs import Clock, DEC7, ev
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))
w = LogWriter(sys.argv[1], clock=Clock(DEC7 + 60), fsync=False)
committed = 0
try:
    for batch in range(100):
        for i in range(batch * 10, batch * 10 + 10):
            w.add(ev(DEC7 + i, seq=i + 1, event_id=f"{i:032x}"), (0, i, 0))
        w.flush()
        committed = batch * 10 + 10
except LogsFull as exc:
    print(json.dumps({"committed": committed, "error": str(exc)}))
    sys.exit(3)
"""


def test_a_full_disk_stops_cleanly_and_a_restart_resumes_exactly_once(tmp_path: Path) -> None:
    """A file size limit (EFBIG, like ENOSPC) mid-write: LogsFull, the file cut back to its last complete line,
    nothing committed past it; with room again, a restart from the last commit writes every event once."""
    import subprocess
    import sys

    root = tmp_path / "logs"
    here = Path(__file__).resolve().parent
    done = subprocess.run([sys.executable, "-c", _FULL_DISK, str(root), "20000", str(here)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(here.parent)})
    assert done.returncode == 3, done.stderr
    report = json.loads(done.stdout)
    assert "cut back to its last complete line" in report["error"] and 0 < report["committed"] < 1000
    live = root / "t-acme" / "2026-12-07.jsonl"
    data = live.read_bytes()
    assert len(data) <= 20000 and data.endswith(b"\n")
    assert [json.loads(x)["seq"] for x in data.splitlines()] == list(range(1, report["committed"] + 1))
    w = LogWriter(root, clock=Clock(DEC7 + 60), fsync=False)
    for i in range(report["committed"], 1000):  # re-delivered from the last commit
        w.add(ev(DEC7 + i, seq=i + 1, event_id=f"{i:032x}"), (0, i, 0))
    w.close()
    assert [r["seq"] for r in read_lines(root)] == list(range(1, 1001))


def test_settings_from_the_environment_and_the_help(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from agentwatch.cli import main
    from agentwatch.config import ConfigError, Settings

    monkeypatch.setenv("AGENTWATCH_LOGS_DIR", "/srv/logs")
    monkeypatch.setenv("AGENTWATCH_LOGS_RETENTION_DAYS", "30")
    monkeypatch.setenv("AGENTWATCH_LOGS_GROUP", "g1")
    monkeypatch.setenv("AGENTWATCH_LOGS_METRICS_PORT", "9467")
    conf = Settings.from_env().logs
    assert (str(conf.dir), conf.retention_days, conf.group, conf.grace_s, conf.metrics_port) == \
        ("/srv/logs", 30, "g1", 900.0, 9467)
    monkeypatch.setenv("AGENTWATCH_LOGS_RETENTION_DAYS", "0")
    with pytest.raises(ConfigError, match="AGENTWATCH_LOGS_RETENTION_DAYS"):
        Settings.from_env()
    with pytest.raises(SystemExit):
        main(["logs", "run", "--help"])
    out = capsys.readouterr().out
    assert "--retention-days" in out and "--metrics-port" in out and "--until-end" in out and "gzipped" in out


def test_a_gzip_that_fails_on_a_full_disk_is_counted_and_finished_later(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import shutil

    clock = Clock(DEC7 + 60)
    w = LogWriter(tmp_path, clock=clock, fsync=False, grace_s=0, maintain_every_s=0)
    w.add(ev(DEC7 + 1), (0, 0, 0))
    w.flush()
    real = shutil.copyfileobj

    def full(*a: Any, **k: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfileobj", full)
    clock.t = DEC7 + 86_400 + 1
    w.maintain(force=True)
    tdir = tmp_path / "t-acme"
    assert sorted(os.listdir(tdir)) == ["2026-12-07.1.jsonl"] and w.stats.maintain_errors == 1
    monkeypatch.setattr(shutil, "copyfileobj", real)
    w.maintain(force=True)
    assert sorted(os.listdir(tdir)) == ["2026-12-07.1.jsonl.gz"]
    w.close()
    assert len(read_lines(tmp_path)) == 1
