"""The pure helpers the benchmarks' verdicts rest on: the window-by-window check against the ground truth and the
py-spy profile tabulation (a wrong one would turn a miscount into "exact", or a profile into the wrong table)."""

from __future__ import annotations

import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from bench_worker import compare_counts  # noqa: E402
from top_frames import top_frames  # noqa: E402

_window = st.tuples(st.sampled_from(["t1", "t2", "t3"]), st.integers(0, 5).map(lambda m: m * 60_000_000))


@given(truth=st.dictionaries(_window, st.integers(1, 50)), found=st.dictionaries(_window, st.integers(1, 50)))
def test_compare_counts_partitions_every_difference(truth: dict, found: dict) -> None:
    got = compare_counts([[t, s, n] for (t, s), n in found.items()], truth)
    assert got["missing"] == len(truth.keys() - found.keys())
    assert got["extra"] == len(found.keys() - truth.keys())
    assert got["wrong"] == sum(1 for w in truth.keys() & found.keys() if truth[w] != found[w])
    assert (got == {"wrong": 0, "missing": 0, "extra": 0}) == (truth == found)


def test_compare_counts_adds_up_rows_of_one_window() -> None:
    """A window reported in pieces (two workers, retractions summed) counts as its total."""
    truth = {("t1", 0): 5}
    assert compare_counts([["t1", 0, 2], ["t1", "0", 3]], truth) == {"wrong": 0, "missing": 0, "extra": 0}
    assert compare_counts([["t1", 0, 2]], truth) == {"wrong": 1, "missing": 0, "extra": 0}


def test_top_frames_counts_self_and_total_for_one_child_process() -> None:
    parent = 'process 1:"python bench/bench_worker.py"'
    child = 'process 2:"python -m agentwatch.cli worker"'
    lines = [
        f"{parent};main (bench.py:1);publish (bench.py:9) 7",
        f"{parent};{child};run (worker.py:3);fold (ingest.py:10);add (aggregate.py:5) 6",
        f"{parent};{child};run (worker.py:3);fold (ingest.py:11) 2",
        f"{parent};{child};thread 0x1;run (worker.py:4);fold (ingest.py:10);fold (ingest.py:12) 2",
        "garbage line without a count",
    ]
    self_, total, samples = top_frames(lines, "agentwatch.cli worker")
    assert samples == 10
    assert self_ == {"add (aggregate.py)": 6, "fold (ingest.py)": 4}
    assert total["run (worker.py)"] == 10 and total["fold (ingest.py)"] == 10  # once per stack, recursion too
    assert "publish (bench.py)" not in total
    _, everything, all_samples = top_frames(lines, None)
    assert all_samples == 17 and everything["publish (bench.py)"] == 7
