"""What the long-running commands share: ISO times in UTC, the status line, stopping on a signal."""

from __future__ import annotations

import os
import signal
from datetime import UTC, datetime, timedelta

import pytest

from agentwatch.foreground import StatusLine, stop_on_signals
from agentwatch.isotime import parse_utc, utc_iso

T0_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z


def test_iso_times_are_utc_unless_they_say_otherwise():
    assert parse_utc("2026-01-01T00:00:01Z") == parse_utc(" 2026-01-01T00:00:01 ") == datetime(
        2026, 1, 1, 0, 0, 1, tzinfo=UTC)
    plus2 = parse_utc("2026-01-01T02:00:00+02:00")
    assert plus2.utcoffset() == timedelta(hours=2) and plus2 == datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_utc("yesterday")
    assert utc_iso(T0_US) == "2026-01-01T00:00:00Z"
    assert utc_iso(T0_US + 61_999_999) == "2026-01-01T00:01:01Z"  # whole seconds, never rounded up
    assert int(parse_utc(utc_iso(T0_US + 5_000_000)).timestamp() * 1_000_000) == T0_US + 5_000_000


def test_the_status_line_is_printed_only_when_it_changes(capsys):
    line = StatusLine(overwrite=True)
    for text in ("1 records", "1 records", "2 records"):
        line.show(text)
    assert capsys.readouterr().err == "\r  1 records\r  2 records"
    lines = StatusLine(overwrite=False)
    for text in ("a", "a", "b", "a"):
        lines.show(text)
    assert capsys.readouterr().err == "  a\n  b\n  a\n"


def test_the_status_line_redraws_in_place_only_on_a_terminal(capsys):
    line = StatusLine()  # pytest's captured stderr is not a terminal
    line.show("1 records")
    line.show("2 records")
    assert capsys.readouterr().err == "  1 records\n  2 records\n"


def test_a_signal_sets_the_stop_event_and_the_old_handler_comes_back():
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals() as stop:
        assert not stop.is_set()
        os.kill(os.getpid(), signal.SIGTERM)  # handled by Python between bytecodes, on this (the main) thread
        assert stop.wait(5)
    assert signal.getsignal(signal.SIGTERM) is before
    with stop_on_signals(signal.SIGUSR1) as stop:
        assert signal.getsignal(signal.SIGTERM) is before  # only the signals asked for
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.wait(5)


@pytest.mark.parametrize("command", [["logs", "run"], ["traces", "run"], ["audit", "run"], ["replay", "run"],
                                     ["alerts", "deliver"]])
def test_every_consumer_command_takes_the_same_run_bounds(command, capsys):
    from agentwatch.cli import build_parser

    parser = build_parser()
    args = parser.parse_args([*command, "--until-end", "--idle-timeout", "2.5"])
    assert args.until_end is True and args.idle_timeout == 2.5
    assert parser.parse_args(command).idle_timeout is None
    for bad in ("0", "-1", "nan", "inf", "soon"):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([*command, "--idle-timeout", bad])
        assert exc.value.code == 2
        assert f"expected a positive number of seconds, not '{bad}'" in capsys.readouterr().err
