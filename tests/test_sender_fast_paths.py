"""The sender's per-key-set fast paths accept and reject exactly what the general paths do, with the same bytes.

Two generated functions run per event on the publisher's sender thread:

* the per-key-set record encoder (``schemas.codegen._compile_keyed``: one unpack of ``d.values()``, one
  ``b"".join`` of field expressions, repeated strings from a per-field cache) against the generic record encoder
  of the same codec (statements per field, kept as the reference and as the fallback that diagnoses);
* the normalizer's per-key-set check (``producers.normalize._compile_check``: one unpack of ``e.values()``)
  against pass 1's test written out here field by field (what the check before the unpack did with ``e[name]``).
"""

from __future__ import annotations

import enum
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from producers.normalize import _I32_MAX, _I32_MIN, _I64_MAX, _I64_MIN, _INT, _LONG, _STR, EventNormalizer
from schemas import contract
from schemas.codec import AvroCodec
from schemas.codegen import EncodeError, _compile_keyed, _Schema


class Text(str):
    pass


class Colour(enum.StrEnum):
    RED = "tool_complete"


_CODEC = AvroCodec()
_WRAPPER = _CODEC._event_codec.encode
_CELLS = {n: c.cell_contents for n, c in zip(_WRAPPER.__code__.co_freevars, _WRAPPER.__closure__, strict=True)}
_GENERIC = _CELLS["generic"]
_NAMESPACE = _CELLS["namespace"]
_SCHEMA = _Schema(contract.strip_logical_types(contract.current().event_json))
_NODE = _SCHEMA.resolve(_SCHEMA.root)
_FIELDS = {f["name"]: f for f in _NODE["fields"]}
_REQUIRED = ["event_id", "schema_version", "event_time", "producer_time", "tenant", "session_id", "seq", "type"]
_OPTIONAL = [n for n in _FIELDS if n not in _REQUIRED]

_repeated = st.sampled_from(["acme", "ok", "error", "gpt-4o-mini", "read_file", "", "é" * 3, "x" * 200, "💥"])
_values = st.one_of(
    st.none(), _repeated, st.text(max_size=40), st.text(min_size=1000, max_size=1100),
    st.integers(min_value=-(1 << 64), max_value=1 << 64), st.integers(min_value=-3000, max_value=3000),
    st.sampled_from([0, 1, -1, 8191, 8192, -8193, 2047, 2048, -2049, (1 << 62) - 1, 1 << 62, _I64_MAX, _I64_MIN,
                     _I32_MAX, _I32_MIN, _I32_MAX + 1]),
    st.booleans(), st.floats(allow_nan=False), st.binary(max_size=5), st.builds(Text, _repeated),
    st.sampled_from(["tool_complete", "llm_call_completed", "no_such_type", Colour.RED]),
    st.lists(st.integers(), max_size=2),
)


def _valid(name: str) -> st.SearchStrategy[Any]:
    spec = _SPECS[name]
    if spec.kind is _STR:
        base: st.SearchStrategy[Any] = st.one_of(_repeated, st.text(max_size=40))
    elif spec.kind is _LONG:
        base = st.one_of(st.integers(min_value=_I64_MIN, max_value=_I64_MAX), st.integers(-3000, 3000),
                         st.integers(1 << 50, 1 << 51))
    elif spec.kind is _INT:
        base = st.integers(min_value=_I32_MIN, max_value=_I32_MAX)
    else:
        base = st.sampled_from(sorted(contract.event_types()))
    return st.one_of(st.none(), base) if spec.nullable else base


_SPECS = EventNormalizer()._specs


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.permutations(_REQUIRED + draw(st.lists(st.sampled_from(_OPTIONAL), unique=True, max_size=20))))
    names = [n for n in names if draw(st.integers(0, 29)) > 0]  # now and then a required field is missing
    valid = draw(st.integers(0, 3))  # 0: any values; else mostly values of the field's own type
    event = {name: draw(_valid(name) if valid and draw(st.integers(0, 15)) else _values) for name in names}
    if draw(st.booleans()):
        event["not_in_schema"] = draw(_values)
    return event


def _outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(*args)
    except EncodeError as exc:
        return "error", str(exc)
    except Exception as exc:  # noqa: BLE001 - the keyed code may raise anything; only "raised" matters
        return "raised", type(exc).__name__


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events(), st.integers(0, 3))
def test_keyed_encoder_accepts_and_rejects_what_the_generic_one_does_with_the_same_bytes(event: dict[str, Any],
                                                                                      repeat: int) -> None:
    keyed = _compile_keyed(_SCHEMA, _NODE, tuple(event), _NAMESPACE)
    reference = _outcome(_GENERIC, event)
    for _ in range(1 + repeat):  # again: the per-field string caches are filled now
        if keyed is not None:
            got = _outcome(keyed, event, b"")
            if got[0] == "ok":
                assert reference == got  # never accepts what the generic encoder refuses, never other bytes
            else:
                assert reference[0] == "error"  # refuses only what the generic encoder refuses
        # what callers see (keyed when compiled, else generic; generic diagnosis on any refusal)
        for _ in range(9):
            assert _outcome(_WRAPPER, event) == reference


def test_cached_strings_are_exact_str_only() -> None:
    """A str subclass whose encode() differs never takes the cached encoding of an equal plain str."""

    class Odd(str):
        def encode(self, *a: Any, **k: Any) -> bytes:  # type: ignore[override]
            return b"odd"

    base = {"event_id": "e", "schema_version": 3, "event_time": 1, "producer_time": 1, "tenant": "acme",
            "session_id": "s", "seq": 1, "type": "tool_complete", "tool_name": "read_file"}
    keyed = _compile_keyed(_SCHEMA, _NODE, tuple(base), _NAMESPACE)
    assert keyed is not None
    plain = keyed(base, b"")
    odd = {**base, "tenant": Odd("acme"), "tool_name": Odd("read_file")}
    assert keyed(odd, b"") == _GENERIC(odd) != plain


def _reference_check(normalizer: EventNormalizer, event: dict[str, Any]) -> bool:
    """Pass 1's test per field, written out (what the compiled check did with ``e[name]`` before the unpack)."""
    cap = normalizer.max_field_chars
    for key, v in event.items():
        if key == "payload":
            continue
        spec = normalizer._specs[key]
        if v is None and spec.nullable:
            continue
        if spec.kind is _STR:
            ok = type(v) is str and len(v) <= cap
        elif spec.kind is _LONG:
            ok = type(v) is int and _I64_MIN <= v <= _I64_MAX
        elif spec.kind is _INT:
            ok = type(v) is int and _I32_MIN <= v <= _I32_MAX
        else:
            ok = type(v) is str and v in normalizer._symbols
        if not ok:
            return False
    return True


_NORMALIZER = EventNormalizer(max_field_chars=1024)


@settings(max_examples=400, deadline=None)
@given(events())
def test_normalizer_check_answers_what_pass_one_answers(event: dict[str, Any]) -> None:
    event.pop("not_in_schema", None)
    event = {k: v for k, v in event.items() if k in _NORMALIZER._specs and _NORMALIZER._specs[k].kind != "other"}
    keys = tuple(event)
    check = None
    for _ in range(8):  # compiled once the key set came _COMPILE_AFTER times
        check = _NORMALIZER._checks.get(keys) or _NORMALIZER._learn(keys)
    if not all(name in keys for name in _NORMALIZER._required):
        assert check is None
        return
    assert check is not None
    assert check(event) is _reference_check(_NORMALIZER, event)
    # the whole result: a fresh normalizer has compiled nothing yet, so it takes the generic pass 1 and 2
    assert _NORMALIZER.normalize(event) == EventNormalizer(max_field_chars=1024).normalize(event)


def test_string_caches_stay_bounded_and_exact_when_values_never_repeat() -> None:
    """A field of unique values (an event id) fills its cache to the bound, then is encoded each time."""
    from schemas.codegen import _STR_CACHE_MAX

    codec = AvroCodec()
    base = {"event_id": "e", "schema_version": 3, "event_time": 1, "producer_time": 1, "tenant": "acme",
            "session_id": "s", "seq": 1, "type": "tool_complete", "tool_name": "read_file"}
    for i in range(3 * _STR_CACHE_MAX):
        event = {**base, "event_id": f"id-{i}", "tool_name": "t" * (i % 300)}
        assert codec.encode_event_body(event) == _GENERIC(event)
    caches = _CELLS["namespace"]["_string_caches"]
    assert 0 < len(caches["event_id"]) <= _STR_CACHE_MAX
    assert all(len(text) <= 128 for text in caches["tool_name"])
