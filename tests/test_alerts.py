"""The Alert record: fingerprint, time formats, Avro encoding, and the firing/resolved lifecycle."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import fastavro
import pytest

from schemas.codec import DecodeError
from streams.alerts import (
    FIRING,
    RESOLVED,
    ZERO_TIME,
    Alert,
    AlertCodec,
    AlertState,
    Change,
    Verdict,
    alert_schema,
    fingerprint,
    parse_rfc3339,
    rfc3339,
    step,
)

T0 = 1_764_064_800_000_000  # 2025-11-25T10:00:00Z
MIN = 60_000_000


def _alert(status: str = FIRING, **overrides) -> Alert:
    fields = dict(
        labels={"alertname": "ToolFailureRateHigh", "tenant": "acme", "tool": "search", "severity": "warning"},
        annotations={"summary": "Tool failure rate 23.0% > 10%", "description": "Tools broken."},
        status=status, starts_at_us=T0, ends_at_us=None if status == FIRING else T0 + 3 * MIN,
        window_start_us=T0, window_end_us=T0 + MIN, value=0.23, threshold=0.10,
    )
    fields.update(overrides)
    return Alert(**fields)


# -- fingerprint ------------------------------------------------------------------------------------------------


def test_fingerprint_equals_prometheus_label_set_fingerprint():
    # Expected values from prometheus/common model/signature_test.go (TestMetricToFingerprint, benchmarks).
    assert fingerprint({}) == f"{14695981039346656037:016x}"
    assert fingerprint({"name": "garland, briggs", "fear": "love is not enough"}) == f"{5799056148416392346:016x}"
    triple = {"first-label": "first-label-value", "second-label": "second-label-value",
              "third-label": "third-label-value"}
    assert fingerprint(triple) == f"{13843036195897128121:016x}"


def test_fingerprint_is_16_hex_and_independent_of_label_order():
    labels = {"alertname": "TokenSpike", "tenant": "acme", "severity": "warning", "team": "agents"}
    prints = {fingerprint(dict(p)) for p in itertools.permutations(labels.items())}
    assert len(prints) == 1
    (fp,) = prints
    assert len(fp) == 16 and int(fp, 16) >= 0 and fp == fp.lower()


def test_fingerprint_separates_names_from_values_and_changes_with_any_label():
    base = {"alertname": "A", "tenant": "acme"}
    assert fingerprint({"ab": "c"}) != fingerprint({"a": "bc"})
    assert fingerprint(base) != fingerprint({**base, "tool": "search"})
    assert fingerprint(base) != fingerprint({**base, "tenant": "acme2"})


def test_fingerprint_is_stable_across_processes():
    labels = {"alertname": "ToolFailureRateHigh", "tenant": "acme", "tool": "search", "severity": "warning"}
    code = ("import json, sys; from streams.alerts import fingerprint; "
            "print(fingerprint(json.loads(sys.argv[1])))")
    seen = set()
    for seed in ("0", "12345"):  # different string-hash salts: the fingerprint must not depend on hash()
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code, json.dumps(labels)], env=env, capture_output=True,
                             text=True, check=True)
        seen.add(out.stdout.strip())
    assert seen == {fingerprint(labels)}


# -- times ------------------------------------------------------------------------------------------------------


def test_rfc3339_round_trip_and_zero_time():
    assert rfc3339(T0) == "2025-11-25T10:00:00Z"
    assert rfc3339(T0 + 250_000) == "2025-11-25T10:00:00.25Z"
    for us in (0, T0, T0 + 1, T0 + 123_456):
        assert parse_rfc3339(rfc3339(us)) == us
    assert parse_rfc3339(ZERO_TIME) is None
    assert parse_rfc3339("2025-11-25T11:00:00+01:00") == T0
    with pytest.raises(ValueError):
        parse_rfc3339("2025-11-25T10:00:00")


def test_firing_alert_has_alertmanager_zero_ends_at_and_resolved_the_window_end():
    firing = _alert(FIRING)
    assert firing.ends_at == "0001-01-01T00:00:00Z"
    assert firing.starts_at == "2025-11-25T10:00:00Z"
    resolved = _alert(RESOLVED)
    assert resolved.ends_at == "2025-11-25T10:03:00Z"
    assert resolved.fingerprint == firing.fingerprint


def test_alertmanager_shapes():
    firing = _alert(FIRING, generator_url="http://grafana/d/x?tenant=acme")
    post = firing.as_postable()
    assert set(post) == {"labels", "annotations", "startsAt", "generatorURL"}  # no endsAt while firing
    hook = firing.as_webhook()
    assert set(hook) == {"status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint"}
    assert hook["endsAt"] == ZERO_TIME and hook["status"] == "firing"
    assert _alert(RESOLVED).as_postable()["endsAt"] == "2025-11-25T10:03:00Z"


# -- Avro -------------------------------------------------------------------------------------------------------


def test_schema_types():
    schema = alert_schema().json
    types = {f["name"]: f["type"] for f in schema["fields"]}
    assert types["labels"] == {"type": "map", "values": "string"}
    assert types["annotations"] == {"type": "map", "values": "string"}
    assert types["window_start"]["logicalType"] == "timestamp-micros"
    assert types["status"]["symbols"] == ["firing", "resolved"]


@pytest.mark.parametrize("alert", [
    _alert(FIRING),
    _alert(RESOLVED, backfill=True, generator_url="http://x"),
    _alert(RESOLVED, value=None, threshold=None, annotations={"summary": "no data", "resolve_reason": "no_data"}),
])
def test_codec_round_trip(alert):
    codec = AlertCodec()
    value = codec.encode(alert)
    assert value[:2] == b"\xc3\x01" and value[2:10] == alert_schema().fingerprint
    back = codec.decode(value)
    assert back.to_record() == alert.to_record()
    assert back == alert
    fastavro.validate(alert.to_record(), alert_schema().parsed, raise_errors=True)
    json.dumps(alert.to_record())  # the record is also JSON-serialisable (for webhooks and logs)


def test_codec_rejects_bad_values_with_reasons():
    codec = AlertCodec()
    good = codec.encode(_alert())
    cases = {
        "empty": b"",
        "bad_magic": b"\x00\x00\x00\x00\x01" + good[10:],
        "truncated_header": good[:6],
        "unknown_fingerprint": good[:2] + b"\x00" * 8 + good[10:],
        "invalid_avro": good[:-3],
    }
    for reason, value in cases.items():
        with pytest.raises(DecodeError) as err:
            codec.decode(value)
        assert err.value.reason == reason, reason
    with pytest.raises(DecodeError) as err:
        codec.decode(good + b"\x00")
    assert err.value.reason == "invalid_avro"


def test_transition_key_tells_transitions_apart_but_not_copies():
    firing, resolved = _alert(FIRING), _alert(RESOLVED)
    assert firing.transition_key() == _alert(FIRING, annotations={"summary": "other text"}).transition_key()
    assert firing.transition_key() != resolved.transition_key()
    assert firing.transition_key() != _alert(FIRING, starts_at_us=T0 + 10 * MIN).transition_key()


def test_from_record_checks_the_stored_fingerprint():
    record = _alert().to_record()
    record["fingerprint"] = "0000000000000000"
    with pytest.raises(ValueError, match="does not match"):
        Alert.from_record(record)


# -- lifecycle --------------------------------------------------------------------------------------------------


def _run(verdicts: list[Verdict], for_windows: int = 1, stale: int | None = 5) -> list[tuple[int, Change]]:
    state = AlertState()
    out = []
    for i, v in enumerate(verdicts):
        change = step(state, v, T0 + i * MIN, for_windows, stale)
        if change is not Change.NONE:
            out.append((i, change))
    return out


B, H, C, N = Verdict.BREACH, Verdict.HOLD, Verdict.CLEAR, Verdict.NO_DATA


def test_one_firing_transition_per_open_alert_then_one_resolved():
    assert _run([B, B, B, H, B, C, C]) == [(0, Change.FIRED), (5, Change.RESOLVED)]


def test_persistence_counts_consecutive_breaches_and_no_data_does_not_break_the_run():
    assert _run([B, B], for_windows=3) == []
    assert _run([B, B, B], for_windows=3) == [(2, Change.FIRED)]
    assert _run([B, H, B, B], for_windows=3) == []  # HOLD breaks a pending run
    assert _run([B, N, B, B], for_windows=3) == [(3, Change.FIRED)]


def test_starts_at_is_the_first_window_of_the_breaching_run():
    state = AlertState()
    for i, v in enumerate([B, C, B, N, B]):
        step(state, v, T0 + i * MIN, 2, 5)
    assert state.firing_since_us == T0 + 2 * MIN


def test_stale_windows_resolve_an_open_alert_and_forget_a_pending_run():
    assert _run([B, N, N, N], stale=3) == [(0, Change.FIRED), (3, Change.EXPIRED)]
    assert _run([B, N, N, N, N, N, N], stale=None) == [(0, Change.FIRED)]
    state = AlertState()
    for i, v in enumerate([B, N, N, N]):
        step(state, v, T0 + i * MIN, 2, 3)
    assert state.is_blank()


def test_state_round_trips_as_plain_data():
    state = AlertState()
    for i, v in enumerate([B, B, H, N]):
        step(state, v, T0 + i * MIN, 1, 5)
    data = json.loads(json.dumps(state.to_dict()))
    assert AlertState.from_dict(data) == state
