"""Faust's terminal spinner, turned off.

faust-streaming 0.15.3: with its progress spinner on (the default), ``Worker.on_setup_root_logger`` sets the root
logger to DEBUG so that every log call spins it; every debug call of aiokafka then builds a ``LogRecord`` (5-8 % of
the worker's CPU, measured in issue 13's py-spy profile), and the spinner is invisible in a service's log anyway.
``tests/test_workarounds.py`` shows the root logger set to DEBUG.
"""

from __future__ import annotations

from typing import Any


def without_spinner(worker: Any) -> Any:
    """``worker`` (a ``faust.Worker``) with no spinner, so the root logger keeps the level the CLI asked for."""
    worker.spinner = None
    return worker
