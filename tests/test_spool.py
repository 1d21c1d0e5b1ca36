"""The disk spool on its own: frame format, damage recovery, acknowledgement, ordering of its three writers."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from producers.spool import (
    FRAME_MAGIC,
    HEADER_SIZE,
    SEQ_BLOCK,
    Spool,
    SpoolEntry,
    SpoolLockedError,
    encode_frame,
    read_frame,
    scan_frames,
)


def frames(n: int, prefix: str = "v") -> list[tuple[bytes, bytes, int]]:
    return [(b"%03d" % (i % 7), f"{prefix}{i}".encode() * (i + 1), i + 1) for i in range(n)]


def drain(spool: Spool, ack: bool = True) -> list[SpoolEntry]:
    out = []
    while (entry := spool.next_frame()) is not None:
        out.append(entry)
        if ack:
            spool.ack(entry)
    return out


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("seg-*.spool"))


# -- frames ---------------------------------------------------------------------------------------------------------


def test_frame_round_trip_and_header_fields() -> None:
    raw = encode_frame(b"042", b"\x00\xffvalue", 17)
    assert raw[:4] == FRAME_MAGIC
    frame = read_frame(raw, 0)
    assert frame is not None
    assert (frame.key, frame.value, frame.n_events, frame.offset, frame.end) == (b"042", b"\x00\xffvalue", 17, 0,
                                                                                  len(raw))


@pytest.mark.parametrize("position", ["magic", "length", "count", "crc", "body"])
def test_any_flipped_byte_makes_the_frame_unreadable(position: str) -> None:
    raw = bytearray(encode_frame(b"001", b"some value bytes", 3))
    index = {"magic": 1, "length": 5, "count": 9, "crc": 13, "body": HEADER_SIZE + 6}[position]
    raw[index] ^= 0x40
    assert read_frame(bytes(raw), 0) is None


def test_scan_resynchronises_after_a_corrupted_middle_frame() -> None:
    parts = [encode_frame(k, v, n) for k, v, n in frames(5)]
    damaged = bytearray(parts[2])
    damaged[HEADER_SIZE + 3] ^= 0xFF
    data = b"".join(parts[:2]) + bytes(damaged) + b"".join(parts[3:])
    scan = scan_frames(data)
    assert [f.value for f in scan.frames] == [v for i, (_, v, _) in enumerate(frames(5)) if i != 2]
    assert len(scan.bad) == 1 and scan.bad[0].kind == "corrupt"
    assert (scan.bad[0].start, scan.bad[0].end) == (len(parts[0]) + len(parts[1]),
                                                    len(parts[0]) + len(parts[1]) + len(parts[2]))


def test_scan_reports_a_torn_tail() -> None:
    parts = [encode_frame(k, v, n) for k, v, n in frames(3)]
    data = b"".join(parts) + parts[0][: len(parts[0]) // 2]
    scan = scan_frames(data)
    assert len(scan.frames) == 3
    assert [(b.kind, b.end - b.start) for b in scan.bad] == [("torn_tail", len(parts[0]) // 2)]


def test_magic_inside_a_value_does_not_fool_the_resync() -> None:
    tricky = encode_frame(b"000", FRAME_MAGIC * 5 + b"tail", 1)
    data = b"garbage" + tricky + encode_frame(b"001", b"next", 1)
    scan = scan_frames(data)
    assert [f.value for f in scan.frames] == [FRAME_MAGIC * 5 + b"tail", b"next"]
    assert [(b.start, b.end, b.kind) for b in scan.bad] == [(0, 7, "corrupt")]


# -- append / read / ack -------------------------------------------------------------------------------------------


def test_frames_come_back_in_order_and_acked_segments_are_deleted(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=200)
    data = frames(20)
    for k, v, n in data:
        assert spool.append(k, v, n)
    assert len(segment_files(tmp_path)) > 2
    assert spool.pending_bytes == sum(len(encode_frame(*f)) for f in data)
    got = drain(spool)
    assert [(e.key, e.value, e.n_events) for e in got] == data
    assert spool.pending_bytes == 0 and spool.is_empty
    assert len(segment_files(tmp_path)) == 1  # only the open tail, reused until it is full
    spool.close()
    assert segment_files(tmp_path) == []


def test_unacked_frames_survive_a_restart_and_acked_ones_do_not(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=300)
    data = frames(12)
    for k, v, n in data:
        spool.append(k, v, n)
    entries = [spool.next_frame() for _ in range(7)]
    for e in entries[:5]:
        assert e is not None
        spool.ack(e)
    spool.close()  # entries 5 and 6 were in flight, never acknowledged
    again = Spool(tmp_path)
    assert again.recovery.frames == 7 and again.recovery.events == sum(n for _, _, n in data[5:])
    assert [(e.key, e.value) for e in drain(again)] == [(k, v) for k, v, _ in data[5:]]
    again.close()


def test_a_failed_frame_is_sent_again_before_new_ones_and_acked_ones_are_not(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for k, v, n in frames(5):
        spool.append(k, v, n)
    e0, e1, e2, e3 = (spool.next_frame() for _ in range(4))
    assert e0 and e1 and e2 and e3
    spool.ack(e0)
    spool.fail(e2)
    spool.fail(e1)
    spool.ack(e3)
    assert spool.next_frame() is e1 and spool.next_frame() is e2  # failed ones first, in file order
    spool.ack(e2)
    spool.ack(e1)
    rest = drain(spool)
    assert [e.value for e in rest] == [frames(5)[4][1]]  # e3 was acknowledged: not sent twice
    assert spool.is_empty
    spool.close()


def test_a_failed_frame_survives_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for k, v, n in frames(3):
        spool.append(k, v, n)
    e0, e1, e2 = (spool.next_frame() for _ in range(3))
    assert e0 and e1 and e2
    spool.fail(e0)
    spool.ack(e1)
    spool.ack(e2)
    spool.close()
    again = Spool(tmp_path)
    assert [e.value for e in drain(again)] == [v for _, v, _ in frames(3)]  # ack position stayed before e0
    again.close()


def test_unread_gives_the_frame_back(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for k, v, n in frames(2):
        spool.append(k, v, n)
    first = spool.next_frame()
    assert first is not None
    spool.unread(first)
    assert [e.value for e in drain(spool)] == [v for _, v, _ in frames(2)]
    spool.close()


def test_size_cap_refuses_the_newest_and_keeps_what_is_there(tmp_path: Path) -> None:
    one = len(encode_frame(b"000", b"x" * 100, 1))
    spool = Spool(tmp_path, max_bytes=one * 3)
    results = [spool.append(b"000", b"x" * 100, 1) for _ in range(5)]
    assert results == [True, True, True, False, False]
    assert spool.pending_bytes == one * 3
    entry = spool.next_frame()
    assert entry is not None
    spool.ack(entry)
    assert spool.append(b"000", b"x" * 100, 1)  # room again once something was acknowledged
    spool.close()


def test_one_owner_per_directory(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    with pytest.raises(SpoolLockedError):
        Spool(tmp_path)
    spool.close()
    Spool(tmp_path).close()


# -- the three writers keep hand-over order -------------------------------------------------------------------------


def test_overflow_segment_sits_between_older_and_newer_sender_data(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(b"001", b"A-before", 1)
    spool.begin_overflow()
    assert spool.append_overflow(b"001", b"O1", 1)
    spool.append(b"001", b"B-buffered-before-overflow", 1)  # the sender still drains older events
    assert spool.append_overflow(b"001", b"O2", 1)
    assert [e.value for e in drain(spool)] == [b"A-before", b"B-buffered-before-overflow"]  # overflow unsealed
    spool.seal_overflow()
    spool.append(b"001", b"C-after", 1)
    assert [e.value for e in drain(spool)] == [b"O1", b"O2", b"C-after"]
    spool.close()


def test_overflow_without_a_tail_and_across_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.begin_overflow()
    spool.append_overflow(b"002", b"O1", 1)
    spool.append(b"002", b"B", 1)
    spool.close()  # closing seals everything; order is kept by segment ids
    again = Spool(tmp_path)
    assert [e.value for e in drain(again)] == [b"B", b"O1"]
    again.close()


def test_front_segment_comes_before_everything_and_is_read_only_when_sealed(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(b"003", b"S1", 1)
    spool.append_front(b"003", b"F1", 2)
    spool.append_front(b"003", b"F2", 2)
    assert spool.front_open and spool.next_frame() is None
    spool.seal_front()
    spool.append(b"003", b"S2", 1)
    got = drain(spool)
    assert [e.value for e in got] == [b"F1", b"F2", b"S1", b"S2"]
    assert sum(e.n_events for e in got) == 6
    spool.close()


# -- damage on disk --------------------------------------------------------------------------------------------------


def _write_segment(directory: Path, parts: list[bytes]) -> Path:
    spool = Spool(directory)
    spool.close()
    path = directory / "seg-001000000000.spool"
    path.write_bytes(b"".join(parts))
    return path


def test_torn_tail_keeps_the_intact_frames_and_quarantines_the_rest(tmp_path: Path) -> None:
    data = frames(4)
    parts = [encode_frame(*f) for f in data]
    path = _write_segment(tmp_path, parts[:3] + [parts[3][:-5]])
    spool = Spool(tmp_path)
    report = spool.recovery
    assert (report.frames, report.torn_tails, report.corrupt_regions) == (3, 1, 0)
    assert report.lost_bytes == len(parts[3]) - 5
    assert len(report.quarantined) == 1 and Path(report.quarantined[0]).read_bytes() == parts[3][:-5]
    assert path.read_bytes() == b"".join(parts[:3])  # rewritten without the torn bytes
    assert [e.value for e in drain(spool)] == [v for _, v, _ in data[:3]]
    spool.close()


def test_corrupted_middle_frame_is_reported_and_the_frames_after_it_are_kept(tmp_path: Path) -> None:
    data = frames(5)
    parts = [encode_frame(*f) for f in data]
    bad = bytearray(parts[1])
    bad[-1] ^= 0x01
    _write_segment(tmp_path, [parts[0], bytes(bad), *parts[2:]])
    spool = Spool(tmp_path)
    report = spool.recovery
    assert (report.frames, report.torn_tails, report.corrupt_regions) == (4, 0, 1)
    assert report.events == sum(n for i, (_, _, n) in enumerate(data) if i != 1)
    assert [e.value for e in drain(spool)] == [v for i, (_, v, _) in enumerate(data) if i != 1]
    assert len(list((tmp_path / "quarantine").iterdir())) == 1
    spool.close()


def test_checkpoint_with_a_bad_offset_re_sends_instead_of_losing(tmp_path: Path) -> None:
    parts = [encode_frame(*f) for f in frames(3)]
    _write_segment(tmp_path, parts)
    (tmp_path / "checkpoint").write_text(json.dumps({"starts": {"1000000000": 10**9}}))
    spool = Spool(tmp_path)
    assert spool.recovery.frames == 3
    spool.close()


# -- permissions, identity, a file system that refuses --------------------------------------------------------------


def test_spool_files_are_private_to_the_owner(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)  # an operator's wide directory is tightened
    spool = Spool(directory)
    spool.identity(None, "p")
    for key, value, n in frames(3):
        assert spool.append(key, value, n)
    spool.sync(force=True)
    spool.close()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    files = [p for p in directory.iterdir() if p.is_file()]
    assert {p.name for p in files} >= {".lock", "checkpoint", "producer"} and segment_files(directory)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {p.name: 0o600 for p in files}


def test_a_restart_keeps_the_producer_id_and_never_reuses_a_batch_seq(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    pid, first = spool.identity(None, "new-a")
    assert pid == "new-a"
    used = first + 5 * SEQ_BLOCK  # far past the first reserved block: a new block is written on the way
    for seq in range(first, used, SEQ_BLOCK // 2):
        spool.reserve(seq)
    spool.close()  # (a SIGKILL leaves the same file: it is written before a sequence is used)
    again = Spool(tmp_path)
    pid2, first2 = again.identity(None, "new-b")
    assert pid2 == "new-a" and first2 > used
    again.close()
    other = Spool(tmp_path)
    assert other.identity("explicit", "new-c")[0] == "explicit"  # an explicit id wins (its own sequence floor)
    other.close()


@given(st.lists(st.integers(min_value=1, max_value=3 * SEQ_BLOCK), min_size=1, max_size=30))
@settings(max_examples=40, deadline=None)
def test_sequences_handed_out_stay_below_the_next_start(tmp_path_factory: pytest.TempPathFactory,
                                                         steps: list[int]) -> None:
    directory = tmp_path_factory.mktemp("ident")
    spool = Spool(directory)
    _, seq = spool.identity(None, "p")
    for step in steps:
        seq += step
        assert spool.reserve(seq) >= seq
    spool.close()
    again = Spool(directory)
    assert again.identity(None, "q")[1] > seq
    again.close()


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 128 KiB tmpfs (root with mount rights only)."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_refuses_whole_frames_and_leaves_no_torn_bytes(tiny_fs: Path) -> None:
    spool = Spool(tiny_fs / "spool", max_bytes=1 << 30)
    accepted = []
    refused = 0
    for i in range(400):
        value = bytes([i % 251]) * 1500
        if spool.append(b"k", value, 1):
            accepted.append(value)
        else:
            refused += 1
    assert accepted and refused and spool.disk_full and spool.write_errors == refused
    assert spool.pending_events == len(accepted)
    got = drain(spool)
    assert [e.value for e in got] == accepted  # nothing torn in between: every accepted frame reads back
    spool.close()
    again = Spool(tiny_fs / "spool")  # starting on a full disk does not raise
    assert again.recovery.torn_tails == 0 and again.recovery.corrupt_regions == 0
    again.close()


def test_a_read_only_spool_directory_raises_oserror_for_the_publisher_to_degrade(tmp_path: Path) -> None:
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        with pytest.raises(OSError):
            Spool(mnt / "spool")
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_an_ended_overflow_episode_is_readable_without_further_appends(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    assert spool.append(b"k", b"tail", 1)
    assert [e.value for e in drain(spool)] == [b"tail"]  # acknowledged; the open tail stays for more appends
    spool.begin_overflow()
    assert spool.append_overflow(b"k", b"over", 1)
    assert spool.append(b"k", b"tail2", 1)  # the sender, still before the overflow segment
    spool.seal_overflow()
    assert [e.value for e in drain(spool)] == [b"tail2", b"over"]
    assert spool.pending_events == 0
    spool.close()
    assert segment_files(tmp_path) == []
