"""Per-string cost of the secret scanner on the publisher's sender thread: this scanner vs the previous one.

Measured in the same run, on the same strings (tests/test_secret_corpus.py's canaries and ordinary strings, mixed
1 secret-bearing string in 10, plus a 4 kB tool output with no secret):

* baseline: ``redact_agentao``, Agentao 0.5.17's table alone (the scanner before issue 12);
* ``redact``: Agentao's table plus agentwatch's additions and both PII classes (the scanner now);
* Yelp's ``detect-secrets`` (``scan_line`` with its default plugins), when installed (``pip install -r
  bench/requirements-scan.txt``): it only *finds* secrets (no redaction), so its figure is a lower bound for using it.

Also printed for ours: how many canaries each catches and how many ordinary strings it changes (detect-secrets'
``scan_line`` reports unfiltered candidates, so only its cost is compared). Microsoft Presidio was not measured:
its analyzer needs spaCy and a language model (hundreds of MB) for any analysis, which rules it out for a producer
embedded in an agent process.
No assertions; run::

    python bench/bench_scan.py --rounds 20
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from test_secret_corpus import CANARIES, _ordinary  # noqa: E402

from schemas.redaction import redact, redact_agentao  # noqa: E402

_DS_SETTINGS: object = None


def _detect_secrets() -> Callable[[str], object] | None:
    try:
        from detect_secrets.core.scan import scan_line
        from detect_secrets.settings import default_settings
    except ImportError:
        return None
    global _DS_SETTINGS
    _DS_SETTINGS = default_settings()
    _DS_SETTINGS.__enter__()  # plugins configured once, as a long-lived producer would (kept referenced)

    def scan(text: str) -> object:
        return [s for line in text.splitlines() or [""] for s in scan_line(line)]
    return scan


def per_string_us(fn: Callable[[str], object], strings: list[str], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for s in strings:
            fn(s)
        best = min(best, time.perf_counter() - t0)
    return best / len(strings) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=20, help="timed rounds; the best is reported (default 20)")
    args = ap.parse_args()
    canaries = [s for samples in CANARIES.values() for s in samples]
    ordinary = _ordinary(9 * len(canaries))
    mixed = [s for i, s in enumerate(ordinary) for s in ((s, canaries[i // 9]) if i % 9 == 0 else (s,))]
    long_clean = [f"line {i} of build output: compiled module_{i}.o in 12 ms\n" for i in range(80)]
    tool_output = ["".join(long_clean)[:4000]]
    scanners: dict[str, Callable[[str], object]] = {
        "baseline redact_agentao": lambda s: redact_agentao(s, {}),
        "redact (now)": lambda s: redact(s, {}),
    }
    ds = _detect_secrets()
    if ds is not None:
        scanners["detect-secrets scan_line"] = ds
    print(f"python {platform.python_version()} on {platform.machine()}; {len(mixed)} strings "
          f"({len(canaries)} with a secret), best of {args.rounds}")
    base = None
    for name, fn in scanners.items():
        us = per_string_us(fn, mixed, args.rounds)
        us_long = per_string_us(fn, tool_output, args.rounds)
        base = base or us
        line = f"  {name:<26} {us:8.2f} us/string (x{us / base:5.1f} baseline)  4 kB clean output {us_long:8.1f} us"
        if not name.startswith("detect"):  # scan_line (the ``--string`` mode) reports candidates unfiltered
            caught = sum(1 for c in canaries if fn(c) != c)
            flagged = sum(1 for c in ordinary if fn(c) != c)
            line += f"  canaries caught {caught}/{len(canaries)}, ordinary strings changed {flagged}/{len(ordinary)}"
        print(line)
    if ds is None:
        print("  detect-secrets not installed: pip install -r bench/requirements-scan.txt")
    else:
        _DS_SETTINGS.__exit__(None, None, None)  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
