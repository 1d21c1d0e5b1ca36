"""A long-running command in a terminal: stop cleanly on Ctrl-C or SIGTERM, and a status line on stderr.

The sinks (``audit run``, ``replay run``, ``alerts deliver``) and the exporter run until told to stop; they finish
the batch in hand, make it durable and commit before returning, so a signal must only set an event, never raise
mid-batch.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def stop_on_signals(*signals: signal.Signals) -> Iterator[threading.Event]:
    """An event that SIGINT and SIGTERM (or ``signals``) set while the block runs; the old handlers come back after."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signals or (signal.SIGINT, signal.SIGTERM))}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class StatusLine:
    """Progress on stderr, printed only when its text changes (an idle sink says nothing new).

    ``overwrite``: one line redrawn in place (``\\r``); otherwise each new text on a line of its own. By default
    it redraws only on a terminal: a ``\\r`` written into a log file (the demo's, a service's) makes one line of
    every status the sink ever showed.
    """

    def __init__(self, overwrite: bool | None = None) -> None:
        self.overwrite = sys.stderr.isatty() if overwrite is None else overwrite
        self.shown = ""

    def show(self, text: str) -> None:
        if text == self.shown:
            return
        self.shown = text
        if self.overwrite:
            print(f"\r  {text}", end="", file=sys.stderr)
        else:
            print(f"  {text}", file=sys.stderr)
