"""Top frames, self and total, of a py-spy profile in collapsed ("raw") format, for one process of it.

py-spy's flame graphs show where time goes but not as a table one can paste into a README; this reads
``py-spy record --format raw`` output (one ``frame;frame;...;leaf count`` line per distinct stack) and prints the
frames with the most samples as the leaf (self) and anywhere on the stack (total, a frame counted once per
stack). ``--process`` keeps only stacks whose own process line (py-spy's ``process <pid>:"<command line>"`` with
``--subprocesses``; a child's stack starts with its ancestors' lines, then its own) contains that text.
Idle time is not sampled unless py-spy was given ``--idle``::

    py-spy record --subprocesses --rate 200 --format raw -o /tmp/worker.txt -- \\
        .venv/bin/python bench/bench_worker.py --only worker --repeat 1
    .venv/bin/python bench/top_frames.py /tmp/worker.txt --process "agentwatch.cli worker" --top 15
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

# py-spy frames look like "function (path/to/file.py:123)"; the line number is dropped so a function is one row
_LINE = re.compile(r":\d+\)$")


def frame_name(frame: str) -> str:
    """``fn (streams/ingest.py:42)`` -> ``fn (streams/ingest.py)``, paths shortened to the site-packages tail."""
    frame = _LINE.sub(")", frame.strip())
    return re.sub(r"\(.*?(?:site-packages|lib/python3\.\d+)/", "(", frame)


def top_frames(lines: list[str], process: str | None) -> tuple[Counter[str], Counter[str], int]:
    """(self samples, total samples, all samples) per frame name, over the stacks of ``process``."""
    self_: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        # with --subprocesses a child's stack starts with its ancestors' process lines, then its own
        procs = [f for f in frames if f.startswith("process ")]
        if process is not None and (not procs or process not in procs[-1]):
            continue
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        n = int(count)
        samples += n
        self_[frame_name(frames[-1])] += n
        for name in {frame_name(f) for f in frames}:
            total[name] += n
    return self_, total, samples


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("profile", type=Path, help="py-spy record --format raw output")
    ap.add_argument("--process", default=None, help="keep stacks whose process line contains this text")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args(argv)
    self_, total, samples = top_frames(args.profile.read_text(errors="replace").splitlines(), args.process)
    if not samples:
        print("no samples (wrong --process?)", file=sys.stderr)
        return 1
    print(f"{samples} samples")
    for title, counter in (("self", self_), ("total", total)):
        print(f"\n| {title} % | frame |\n|---:|---|")
        for name, n in counter.most_common(args.top):
            print(f"| {100 * n / samples:.1f} | `{name}` |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
