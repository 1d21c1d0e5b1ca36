"""Render an HTML page in headless Chromium (Debian's ``chromium`` package) and judge what came out.

Two views of the page: a screenshot (PNG, decoded here with zlib: no imaging library needed) whose pixels must not
be blank, and Chromium's DOM after parsing (``--dump-dom``), in which the charts must exist. Helpers for tests.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
         "--disable-dev-shm-usage")


def find_chromium() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def screenshot(browser: str, page: Path, out: Path, size: tuple[int, int] = (1100, 2400)) -> Path:
    """The page as Chromium draws it, saved to ``out``."""
    proc = subprocess.run([browser, *FLAGS, f"--window-size={size[0]},{size[1]}", f"--screenshot={out}",
                           page.resolve().as_uri()], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0 or not out.exists():
        raise AssertionError(f"chromium exited {proc.returncode} without a screenshot:\n{proc.stderr[-2000:]}")
    return out


def dump_dom(browser: str, page: Path) -> str:
    """The DOM after Chromium parsed the page, serialised."""
    proc = subprocess.run([browser, *FLAGS, "--dump-dom", page.resolve().as_uri()], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise AssertionError(f"chromium --dump-dom exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return proc.stdout


@dataclass(frozen=True)
class Pixels:
    width: int
    height: int
    inked: int  # pixels that are not the page's background (the most common colour)
    colours: int
    chromatic: int  # pixels with colour (channels differ by > 40): chart fills and lines, not grey text

    @property
    def chromatic_fraction(self) -> float:
        return self.chromatic / max(1, self.width * self.height)

    @property
    def inked_fraction(self) -> float:
        return self.inked / max(1, self.width * self.height)


def png_pixels(path: Path) -> Pixels:
    """Decode an 8-bit RGB/RGBA non-interlaced PNG (what Chromium writes) and count its non-background pixels."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise AssertionError(f"{path} is not a PNG")
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert ihdr is not None, "PNG without IHDR"
    width, height, depth, colour_type, _, _, interlace = ihdr
    if depth != 8 or colour_type not in (2, 6) or interlace:
        raise AssertionError(f"unexpected PNG format: depth {depth}, colour type {colour_type}, interlace {interlace}")
    bpp = 3 if colour_type == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    prev, counts = bytearray(stride), {}
    for y in range(height):
        ftype, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 0xFF
            elif ftype == 2:
                line[i] = (line[i] + b) & 0xFF
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        for x in range(0, stride, bpp):
            px = bytes(line[x:x + 3])
            counts[px] = counts.get(px, 0) + 1
        prev = line
    background = max(counts.values())
    chromatic = sum(n for px, n in counts.items() if max(px) - min(px) > 40)
    return Pixels(width, height, width * height - background, len(counts), chromatic)


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, dict(attrs)))


def elements(dom: str) -> list[tuple[str, dict[str, str | None]]]:
    p = _Elements()
    p.feed(dom)
    return p.found


def check_report(browser: str, page: Path, out_dir: Path, tenants: int, cost: bool) -> None:
    """Fail on a blank or broken page: the screenshot has ink, and Chromium's DOM holds every chart with marks."""
    shot = screenshot(browser, page, out_dir / f"{page.stem}.png", size=(1000, 1400))
    px = png_pixels(shot)
    assert px.inked_fraction > 0.03 and px.colours > 20, f"blank-looking screenshot {shot}: {px}"
    assert px.chromatic_fraction > 0.03, f"no charts drawn in the screenshot {shot} (text only?): {px}"
    found = elements(dump_dom(browser, page))
    charts = [a for t, a in found if t == "svg" and "chart" in (a.get("class") or "")]
    kinds = [a.get("data-chart") for a in charts]
    per_tenant = 4 if cost else 3
    assert len(charts) == tenants * per_tenant + 1, kinds
    assert kinds.count("timeline") == 1 and kinds.count("cost") == (tenants if cost else 0)
    marks = [t for t, a in found if t in ("rect", "circle", "polyline")]
    assert len(marks) > 10 * tenants, f"charts without marks: {len(marks)}"
