"""Avro binary encoders and decoders specialised for one schema, generated as Python source at import.

Why: fastavro interprets the schema for every datum and costs about 1 µs per field; an AgentEvent has 33 fields,
most of them null. Straight-line code per field (a ``None`` check appending ``b"\\x00"``, zig-zag varints from
precomputed tables, ``str.encode`` plus a length prefix, enum indexes from a dict) does the same work without the
interpretation. fastavro stays the reference (tests compare bytes and decoded values with it) and resolves data
written with other schema versions; these codecs only handle data written with exactly the compiled schema.

Encoding costs, measured (instruction counts, see bench/bench_codec.py): a timestamp's 8-byte varint is two
table lookups and a memo (_LOW14, _high_varint), not big-int bit spreading; an optional string's branch index
and length come from one table (_prefixed); a record root is specialised per key set of the datum dict
(_keyed_encoder: absent fields become one constant, the values come from one unpack of ``d.values()``, the fields
are one ``b"".join`` of expressions, and repeated strings come encoded from a per-field cache); an array of
records joins each item as it is encoded, so a batch does not keep ~40 small pieces per event alive until the end
(that outgrew the L2 cache).

Scope: null, boolean, int, long, float, double, bytes, string, enum, fixed, record, array, map, and unions that are
``T`` or ``null`` plus one ``T`` (the shape of every field the evolution policy allows). Anything else (other
unions, logical types, which would make the result differ from fastavro's) raises :class:`UnsupportedSchema` at
compile time so the caller can keep fastavro.

Valid input gives exactly fastavro's bytes / values. The encoder is stricter than fastavro on types (no bool for a
number, ints must fit int/long, arrays must be lists or tuples) and raises :class:`EncodeError` naming the field.
The decoder raises :class:`AvroDecodeError` on truncated data, malformed varints, out-of-range union or enum
indexes, negative lengths and bad UTF-8; it never reads past the end and leaves trailing-byte policy to its caller.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

INT_MIN, INT_MAX = -(1 << 31), (1 << 31) - 1
LONG_MIN, LONG_MAX = -(1 << 63), (1 << 63) - 1
_TABLE_BITS = 14  # varint tables cover 0 <= n < 2**14 (1- and 2-byte varints)
_TABLE_SIZE = 1 << _TABLE_BITS
_MAX_ZERO_SIZE_ITEMS = 1 << 20  # cap for block counts of items that may take no bytes (e.g. an array of null)
_TRUNCATED = "truncated Avro body"
_NULL_CHUNK = 4  # consecutive [null, T] fields checked together (see _chunks)


class UnsupportedSchema(ValueError):
    """The schema uses a construct this generator does not compile; use fastavro for it."""


class EncodeError(ValueError):
    """A datum that does not fit the schema. ``field`` is a dotted path such as ``events[3].duration_ms``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class AvroDecodeError(ValueError):
    """Bytes that are not a valid Avro body for the compiled schema."""


class PreEncoded(dict):  # type: ignore[type-arg]
    """A record datum that carries its own Avro body, made by a specialised encoder of its producer.

    Built like a dict, then given ``avro`` (the body) and ``record`` (the full name of its record type): the
    generated encoder of that record type appends ``avro`` instead of encoding the dict (any other record type
    ignores it). The dict keeps the same contents, so everything else (JSON, comparisons, rules) reads it as before.
    Whoever builds one vouches that ``avro`` is exactly what the generated encoder would write for the dict (a
    test must compare them) and must not change the dict afterwards.
    """

    __slots__ = ("avro", "record")


class _Wrong(Exception):
    """Raised by generated code where Python itself would accept a wrong value; the caller diagnoses it."""


# -- varint tables and helpers used by generated code ------------------------------------------------------------


def _uvarint_slow(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _repeat(pattern: int, width: int, total: int = 128) -> int:
    return sum(pattern << i for i in range(0, total, width))


_U = tuple(_uvarint_slow(n) for n in range(_TABLE_SIZE))  # unsigned varint of n
_HALF = _TABLE_SIZE // 2
# _ZZ[v] is the zig-zag varint of v for -_HALF <= v < _HALF: negative v index from the end of the tuple.
_ZZ = tuple(_U[2 * v] for v in range(_HALF)) + tuple(_U[-2 * v - 1] for v in range(-_HALF, 0))
_ZZ_DEC = tuple((b >> 1) ^ -(b & 1) for b in range(128))  # zig-zag value of a one-byte varint
_PREFIXED = 2048  # _prefixed tables cover -_PREFIXED <= v < _PREFIXED


@functools.cache
def _prefixed(head: bytes) -> tuple[bytes, ...]:
    """``head`` (a union branch index) + the zig-zag varint of v, indexed like _ZZ for -_PREFIXED <= v < _PREFIXED:
    the index and a short string's length, or a small number, in one append."""
    return tuple(head + _ZZ[v] for v in range(_PREFIXED)) + tuple(head + _ZZ[v] for v in range(-_PREFIXED, 0))

# Larger varints move 7-bit groups to and from byte lanes with a few whole-int operations instead of a loop over
# bytes (a timestamp is 8 bytes): split into 64-, 32-, 16-bit lanes, then bytes, and back.
_S4A, _S4B = (1 << 56) - 1, ((1 << 56) - 1) << 64
_S3A, _S3B = _repeat(0x0FFFFFFF, 64), _repeat(0x0FFFFFFF00000000, 64)
_S2A, _S2B = _repeat(0x3FFF, 32), _repeat(0x3FFF0000, 32)
_S1A, _S1B = _repeat(0x7F, 16), _repeat(0x7F00, 16)
_G1A, _G1B = _repeat(0x007F, 16), _repeat(0x3F80, 16)
_G2A, _G2B = _repeat(0x00003FFF, 32), _repeat(0x0FFFC000, 32)
_G3A, _G3B = _repeat(0x0FFFFFFF, 64), _repeat(0x00FFFFFFF0000000, 64)
_G4A, _G4B = (1 << 56) - 1, ((1 << 56) - 1) << 56
_CONT = tuple(_repeat(0x80, 8, 8 * (k - 1)) for k in range(11))  # continuation bits of a k-byte varint
_KEEP = tuple(_repeat(0x7F, 8, 8 * k) for k in range(11))  # the 7 payload bits of k bytes
_STOP = _repeat(0x80, 8, 80)
_STOP8 = _repeat(0x80, 8, 64)
_MASK64 = (1 << 64) - 1
_LEN1 = tuple(b >> 1 if b < 128 and not b & 1 else -1 for b in range(256))  # one-byte length, -1: read it slowly
_ZZ_DEC2 = tuple(((n >> 1) ^ -(n & 1)) for n in range(_TABLE_SIZE))  # zig-zag value of a two-byte varint
_unpack_q = struct.Struct("<Q").unpack_from


# _LOW14[c]: c's 14 bits as the first two bytes of a longer varint (both with the continuation bit set)
_LOW14 = tuple(bytes(((c & 0x7F) | 0x80, (c >> 7) | 0x80)) for c in range(_TABLE_SIZE))
_HIGH: dict[int, bytes] = {}  # memo of _uvarint(n >> 14) for larger longs; bounded by _high_varint
_HIGH_MAX = 4096


def _high_varint(n: int) -> bytes:
    """``_uvarint(n)``, memoised: the upper groups of timestamps close in time are the same."""
    b = _uvarint(n)
    if len(_HIGH) >= _HIGH_MAX:
        _HIGH.clear()
    _HIGH[n] = b
    return b


def _uvarint(n: int) -> bytes:
    """Unsigned varint of 0 <= n < 2**70."""
    if n < _TABLE_SIZE:
        return _U[n]
    k = (n.bit_length() + 6) // 7
    x = (n & _S4A) | ((n << 8) & _S4B) if k > 8 else n
    if k > 4:
        x = (x & _S3A) | ((x << 4) & _S3B)
    x = (x & _S2A) | ((x << 2) & _S2B)
    x = (x & _S1A) | ((x << 1) & _S1B)
    return (x | _CONT[k]).to_bytes(k, "little")


def _enc_long(v: Any) -> bytes:
    """Zig-zag varint of a long outside the table range (or a value the generated check did not admit)."""
    if v.__class__ is not int and (not isinstance(v, int) or isinstance(v, bool)):
        raise _Wrong
    if not LONG_MIN <= v <= LONG_MAX:
        raise _Wrong
    n = (v << 1) ^ (v >> 63)
    if n < _TABLE_SIZE:
        return _U[n]
    k = (n.bit_length() + 6) // 7  # _uvarint inlined: this is the path of every timestamp
    x = (n & _S4A) | ((n << 8) & _S4B) if k > 8 else n
    if k > 4:
        x = (x & _S3A) | ((x << 4) & _S3B)
    x = (x & _S2A) | ((x << 2) & _S2B)
    x = (x & _S1A) | ((x << 1) & _S1B)
    return (x | _CONT[k]).to_bytes(k, "little")


def varint_long(v: int) -> bytes:
    """Avro's zig-zag varint of a long, e.g. the item count that opens an array block."""
    try:
        return _ZZ[v] if v.__class__ is int and -_HALF <= v < _HALF else _enc_long(v)
    except _Wrong:
        raise EncodeError("", f"not an Avro long: {v!r}") from None


def _enc_int(v: Any) -> bytes:
    if v.__class__ is not int and (not isinstance(v, int) or isinstance(v, bool)):
        raise _Wrong
    if not INT_MIN <= v <= INT_MAX:
        raise _Wrong
    return _uvarint((v << 1) ^ (v >> 63))


def _enc_bytes(v: Any) -> bytes:
    if not isinstance(v, (bytes, bytearray)):
        raise _Wrong
    return _uvarint(2 * len(v)) + bytes(v)


def _enc_enum(v: Any, table: dict[str, bytes]) -> bytes:
    """A str subclass such as a ``(str, Enum)`` member hashes differently from its text: look up the text."""
    if isinstance(v, str):
        found = table.get(str.__str__(v))
        if found is not None:
            return found
    raise _Wrong


def _read_uvarint(data: bytes, pos: int) -> tuple[int, int]:
    """Raw unsigned varint at ``pos``: at most 10 bytes and 64 bits, as the Avro spec allows."""
    x = int.from_bytes(data[pos : pos + 10], "little")
    stops = ~x & _STOP
    if not stops:
        if pos + 10 > len(data):
            raise AvroDecodeError(_TRUNCATED)
        raise AvroDecodeError("varint longer than 10 bytes")
    k = (stops & -stops).bit_length() >> 3  # bytes up to and including the first without a continuation bit
    if pos + k > len(data):  # the "stop" was a missing byte read as zero
        raise AvroDecodeError(_TRUNCATED)
    x &= _KEEP[k]
    x = (x & _G1A) | ((x >> 1) & _G1B)
    x = (x & _G2A) | ((x >> 2) & _G2B)
    if k > 4:
        x = (x & _G3A) | ((x >> 4) & _G3B)
        if k > 8:
            x = (x & _G4A) | ((x >> 8) & _G4B)
            if x >> 64:
                raise AvroDecodeError("varint overflows 64 bits")
    return x, pos + k


def _read_long(data: bytes, pos: int) -> tuple[int, int]:
    """Zig-zag long at ``pos``; the generated code has already handled one- and two-byte varints."""
    if pos + 8 <= len(data):  # the common case: the varint ends within the next 8 bytes, read them as one int
        (x,) = _unpack_q(data, pos)
        stops = ~x & _STOP8
        if stops:
            k = (stops & -stops).bit_length() >> 3
            x &= _KEEP[k]
            x = (x & _G1A) | ((x >> 1) & _G1B)
            if k > 2:
                x = (x & _G2A) | ((x >> 2) & _G2B)
                if k > 4:
                    x = (x & _G3A) | ((x >> 4) & _G3B)
            return (x >> 1) ^ -(x & 1), pos + k
    n, pos = _read_uvarint(data, pos)
    return (n >> 1) ^ -(n & 1), pos


def _union_index(data: bytes, pos: int, branches: int) -> tuple[int, int]:
    """A union index the generated code did not match as one byte: padded varints are legal, the rest is not."""
    if data[pos] < 128:
        index = _ZZ_DEC[data[pos]]
        pos += 1
    else:
        index, pos = _read_long(data, pos)
    if not 0 <= index < branches:
        raise AvroDecodeError(f"union index out of range: {index}")
    return index, pos


def _read_int(data: bytes, pos: int) -> tuple[int, int]:
    v, pos = _read_long(data, pos)
    if not INT_MIN <= v <= INT_MAX:
        raise AvroDecodeError(f"int out of range: {v}")
    return v, pos


def _read_len(data: bytes, pos: int) -> tuple[int, int]:
    v, pos = _read_long(data, pos)
    if v < 0:
        raise AvroDecodeError(f"negative length {v}")
    return v, pos


def _bad(what: str, value: Any) -> AvroDecodeError:
    return AvroDecodeError(f"{what}: {value!r}")


# -- schema model -------------------------------------------------------------------------------------------------

_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def _fullname(schema: dict[str, Any], namespace: str | None) -> str:
    name = schema["name"]
    if "." in name:
        return name
    ns = schema.get("namespace", namespace)
    return f"{ns}.{name}" if ns else name


class _Schema:
    """Resolves named references and checks the supported subset once, before any code is generated."""

    def __init__(self, root: Any) -> None:
        self.named: dict[str, dict[str, Any]] = {}
        self.root = self._walk(root, None)
        self.project: dict[str, tuple[str, ...]] = {}  # record name -> fields its decoder returns as a tuple
        self.inlining: set[str] = set()  # projected records whose reader is being inlined (no recursion)

    def function(self, kind: str, name: str) -> str:
        """A unique Python identifier for the encoder or decoder function of the named record ``name``."""
        return f"_{kind}{list(self.named).index(name)}_{name.replace('.', '_')}"

    def _walk(self, s: Any, ns: str | None) -> Any:
        if isinstance(s, str):
            if s in _PRIMITIVES:
                return s
            full = s if "." in s or ns is None else f"{ns}.{s}"
            for candidate in (full, s):
                if candidate in self.named:
                    return candidate
            raise UnsupportedSchema(f"unknown named type {s!r}")
        if isinstance(s, list):
            branches = [self._walk(b, ns) for b in s]
            non_null = [b for b in branches if b != "null"]
            if len(non_null) > 1 or len(branches) > 2 or not branches:
                raise UnsupportedSchema(f"union {s!r}: only T or [null, T] unions are compiled")
            return branches
        if not isinstance(s, dict):
            raise UnsupportedSchema(f"not a schema: {s!r}")
        if "logicalType" in s:
            raise UnsupportedSchema("logical types are not compiled (strip them, as schemas.contract does)")
        t = s["type"]
        if t in _PRIMITIVES:
            return t
        if t in ("record", "error", "enum", "fixed"):
            full = _fullname(s, ns)
            if full in self.named:
                raise UnsupportedSchema(f"{full} defined twice")
            node: dict[str, Any] = {"type": t, "name": full}
            self.named[full] = node
            if t == "enum":
                node["symbols"] = list(s["symbols"])
            elif t == "fixed":
                node["size"] = int(s["size"])
            else:
                inner_ns = full.rpartition(".")[0] or None
                node["fields"] = [
                    {"name": f["name"], "type": self._walk(f["type"], inner_ns), **_default_of(f)}
                    for f in s["fields"]
                ]
            return full
        if t == "array":
            return {"type": "array", "items": self._walk(s["items"], ns)}
        if t == "map":
            return {"type": "map", "values": self._walk(s["values"], ns)}
        return self._walk(t, ns)

    def resolve(self, s: Any) -> Any:
        return self.named[s] if isinstance(s, str) and s in self.named else s

    def min_size(self, s: Any, seen: frozenset[str] = frozenset()) -> int:
        """A lower bound of the encoded size, used to reject block counts larger than the remaining bytes."""
        if isinstance(s, list):
            return 1 + min(self.min_size(b, seen) for b in s)  # the index, then the smallest branch
        if isinstance(s, str) and s in self.named:
            if s in seen:
                return 0
            node = self.named[s]
            if node["type"] == "fixed":
                return node["size"]
            if node["type"] == "enum":
                return 1
            return sum(self.min_size(f["type"], seen | {s}) for f in node["fields"])
        if s == "null":
            return 0
        if s == "float":
            return 4
        if s == "double":
            return 8
        return 1


def _default_of(field: dict[str, Any]) -> dict[str, Any]:
    return {"default": field["default"]} if "default" in field else {}


# -- code generation ----------------------------------------------------------------------------------------------


class _Emitter:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.consts: dict[str, Any] = {}
        self._n = 0

    def var(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def const(self, value: Any, prefix: str = "K") -> str:
        name = self.var(f"_{prefix}")
        self.consts[name] = value
        return name

    def line(self, depth: int, text: str) -> None:
        self.lines.append("    " * depth + text)


def _null_first(s: Any) -> bool:
    return isinstance(s, list) and len(s) == 2 and s[0] == "null"


def _chunks(fields: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Fields grouped so that runs of ``[null, T]`` fields form chunks of up to _NULL_CHUNK.

    Most optional fields are null on any given event: a chunk that is entirely null is one check and one
    ``b"\\x00" * k`` when encoding, one ``startswith`` when decoding, instead of k of each.
    """
    groups: list[list[dict[str, Any]]] = []
    for field in fields:
        last = groups[-1] if groups else None
        if (
            last is not None
            and _null_first(field["type"])
            and _null_first(last[0]["type"])
            and len(last) < _NULL_CHUNK
        ):
            last.append(field)
        else:
            groups.append([field])
    return groups


def _enc_group(schema: _Schema, e: _Emitter, group: list[dict[str, Any]], names: list[str]) -> None:
    """Code writing one chunk of fields (see :func:`_chunks`) whose values are in the variables ``names``: a run
    of optional fields that are all None is one constant; otherwise each field's own code."""
    depth = 1
    if len(group) > 1:
        e.line(1, f"if {' and '.join(f'{v} is None' for v in names)}:")
        e.line(2, f"ap({bytes(len(group))!r})")
        e.line(1, "else:")
        depth = 2
    for field, v in zip(group, names, strict=True):
        _enc_value(schema, e, field["type"], v, depth)


def _gen_encoder(schema: _Schema, e: _Emitter) -> None:
    """One function per record. Field values are fetched with ``d.get(name)`` (a specialised method call, no
    bound-method object); a missing required field comes back as None, which every type but ``null`` rejects,
    so the diagnosis still says "required field is missing"."""
    for name, node in schema.named.items():
        if node["type"] != "record":
            continue
        e.line(0, f"def {schema.function('enc', name)}(d, ap):")
        e.line(1, f"if d.__class__ is _PreEncoded and d.record == {name!r}:")
        e.line(2, "ap(d.avro)")
        e.line(2, "return None")
        fields = node["fields"]
        names = [e.var("v") for _ in fields]
        for field, v in zip(fields, names, strict=True):
            _enc_fetch(schema, e, field, v)
        by_field = {id(f): v for f, v in zip(fields, names, strict=True)}
        for group in _chunks(fields):
            _enc_group(schema, e, group, [by_field[id(f)] for f in group])
        e.line(1, "return None")
        e.line(0, "")


def _enc_fetch(schema: _Schema, e: _Emitter, field: dict[str, Any], v: str) -> None:
    """``v = `` the field's value as fastavro's record writer takes it: a missing field with a non-null default
    takes the default, a required ``null`` field must be present, anything else missing is None."""
    key = repr(field["name"])
    default = _python_default(schema, field["type"], field["default"]) if "default" in field else None
    if default is not None:
        e.line(1, f"{v} = d.get({key}, {e.const(default)})")
    elif field["type"] == "null" and "default" not in field:
        e.line(1, f"{v} = d[{key}]")
    else:
        e.line(1, f"{v} = d.get({key})")


def _python_default(schema: _Schema, s: Any, default: Any) -> Any:
    """An Avro JSON default as the Python datum (bytes and fixed defaults are ISO-8859-1 strings in JSON)."""
    branch = s[0] if isinstance(s, list) else s
    node = schema.resolve(branch)
    if default is not None and (branch == "bytes" or (isinstance(node, dict) and node.get("type") == "fixed")):
        return default.encode("latin-1")
    return default


def _enc_value(schema: _Schema, e: _Emitter, s: Any, v: str, depth: int) -> None:
    if isinstance(s, list):
        if len(s) == 1:
            e.line(depth, "ap(b'\\x00')")
            _enc_value(schema, e, s[0], v, depth)
            return
        null_index = s.index("null")
        other = s[1 - null_index]
        index = _U[2 * (1 - null_index)]
        e.line(depth, f"if {v} is None:")
        e.line(depth + 1, f"ap({_U[2 * null_index]!r})")
        e.line(depth, "else:")
        other_type = schema.resolve(other)
        if other_type in ("string", "long", "int"):
            # the branch index and a short length (or small number) come from one table: one append, not two
            table = e.const(_prefixed(index), "P")
            if other_type == "string":
                b, n = e.var("b"), e.var("n")
                e.line(depth + 1, f"{b} = {v}.encode()")
                e.line(depth + 1, f"ap({table}[{n}] if ({n} := len({b})) < {_PREFIXED} "
                                  f"else {index!r} + _uvarint(2 * {n}))")
                e.line(depth + 1, f"ap({b})")
                return
            e.line(depth + 1, f"if {v}.__class__ is int and -{_PREFIXED} <= {v} < {_PREFIXED}:")
            e.line(depth + 2, f"ap({table}[{v}])")
            e.line(depth + 1, "else:")
            e.line(depth + 2, f"ap({index!r})")
            _enc_value(schema, e, other, v, depth + 2)
            return
        e.line(depth + 1, f"ap({index!r})")
        _enc_value(schema, e, other, v, depth + 1)
        return
    node = schema.resolve(s)
    t = node["type"] if isinstance(node, dict) else node
    if t == "null":
        e.line(depth, f"if {v} is not None: raise _Wrong")
    elif t == "boolean":
        e.line(depth, f"if {v} is True: ap(b'\\x01')")
        e.line(depth, f"elif {v} is False: ap(b'\\x00')")
        e.line(depth, "else: raise _Wrong")
    elif t in ("int", "long"):
        if t == "int":
            e.line(depth, f"ap(_ZZ[{v}] if {v}.__class__ is int and -{_HALF} <= {v} < {_HALF} else _enc_int({v}))")
        else:
            # A larger non-negative long (a timestamp, a token count): the zig-zag value's low 14 bits are its
            # first two varint bytes (from a table); the rest is the varint of the value >> 14: a table again
            # below 2**14 (counts), else memoised, since timestamps close in time share it (it changes every
            # 8 ms). About 4x less CPU than spreading 7-bit groups with big-int arithmetic.
            x = e.var("q")
            e.line(depth, f"if {v}.__class__ is int and -{_HALF} <= {v} < {_HALF}:")
            e.line(depth + 1, f"ap(_ZZ[{v}])")
            e.line(depth, f"elif {v}.__class__ is int and 0 <= {v} < {1 << 62:#x}:")
            e.line(depth + 1, f"{x} = {v} << 1")
            e.line(depth + 1, f"ap(_LOW14[{x} & 0x3fff])")
            e.line(depth + 1, f"{x} >>= 14")
            e.line(depth + 1, f"ap(_U[{x}] if {x} < {_TABLE_SIZE} else _HIGH.get({x}) or _high_varint({x}))")
            e.line(depth, "else:")
            e.line(depth + 1, f"ap(_enc_long({v}))")
    elif t in ("float", "double"):
        pack = "_pack_f" if t == "float" else "_pack_d"
        e.line(depth, f"if {v}.__class__ is bool: raise _Wrong")
        e.line(depth, f"ap({pack}({v}))")
    elif t == "string":
        b, n = e.var("b"), e.var("n")
        e.line(depth, f"{b} = {v}.encode()")
        e.line(depth, f"ap(_ZZ[{n}] if ({n} := len({b})) < {_HALF} else _uvarint(2 * {n}))")
        e.line(depth, f"ap({b})")
    elif t == "bytes":
        e.line(depth, f"ap(_enc_bytes({v}))")
    elif t == "enum":
        table = e.const({sym: _uvarint(2 * i) for i, sym in enumerate(node["symbols"])}, "E")
        e.line(depth, f"ap({table}.get({v}) or _enc_enum({v}, {table}))")
    elif t == "fixed":
        e.line(depth, f"if not isinstance({v}, (bytes, bytearray)) or len({v}) != {node['size']}: raise _Wrong")
        e.line(depth, f"ap(bytes({v}))")
    elif t == "record":
        e.line(depth, f"{schema.function('enc', node['name'])}({v}, ap)")
    elif t in ("array", "map"):
        n = e.var("n")
        x = e.var("x")
        kind = "(list, tuple)" if t == "array" else "dict"
        e.line(depth, f"if not isinstance({v}, {kind}): raise _Wrong")
        e.line(depth, f"{n} = len({v})")
        e.line(depth, f"if {n}:")
        e.line(depth + 1, f"ap(_uvarint(2 * {n}))")
        item = schema.resolve(node["items"]) if t == "array" else None
        if isinstance(item, dict) and item["type"] == "record":
            # Each record is joined into one bytes as soon as it is encoded: a batch that kept every piece (~40
            # small bytes objects per event) alive until the final join outgrew the L2 cache (cachegrind, 512 KiB
            # last level: 48 misses per event against 15 for encode_event; 19 joined per item) and cost ~1.3x
            # encode_event's CPU per event; joined per item, the pieces die young and their memory is reused hot.
            o = e.var("o")
            e.line(depth + 1, f"{o} = []")
            e.line(depth + 1, f"for {x} in {v}:")
            e.line(depth + 2, f"{schema.function('enc', item['name'])}({x}, {o}.append)")
            e.line(depth + 2, f"ap(b''.join({o}))")
            e.line(depth + 2, f"{o}.clear()")
        elif t == "array" and item in ("int", "long"):
            # Arrays of small ints (a sketch's bucket keys and counts: dozens per duration, hundreds per window
            # record) in one C-level pass through the zig-zag table when every item is a plain int in its range;
            # anything else (bools, floats, big values) takes the per-item code, which checks and reports.
            e.line(depth + 1, f"if {{*map(type, {v})}} == _INT_ONLY and -{_HALF} <= min({v}) and max({v}) < {_HALF}:")
            e.line(depth + 2, f"ap(b''.join(map(_ZZ.__getitem__, {v})))")
            e.line(depth + 1, "else:")
            e.line(depth + 2, f"for {x} in {v}:")
            _enc_value(schema, e, node["items"], x, depth + 3)
        elif t == "array":
            e.line(depth + 1, f"for {x} in {v}:")
            _enc_value(schema, e, node["items"], x, depth + 2)
        else:
            k = e.var("k")
            e.line(depth + 1, f"for {k}, {x} in {v}.items():")
            _enc_value(schema, e, "string", k, depth + 2)
            _enc_value(schema, e, node["values"], x, depth + 2)
        e.line(depth, "ap(b'\\x00')")
    else:  # pragma: no cover - _Schema admits nothing else
        raise UnsupportedSchema(f"cannot encode {t!r}")


def _gen_decoder(schema: _Schema, e: _Emitter, project: Mapping[str, tuple[str, ...]]) -> None:
    """Each record decodes into a copy of a template dict holding None for every field, then sets the fields
    that are not null: copying a prebuilt 33-key dict and storing a dozen values costs about a third of
    building the dict from 33 values. A record named in ``project`` decodes into a tuple instead (see
    :func:`_gen_projected`)."""
    for name, node in schema.named.items():
        if node["type"] != "record":
            continue
        if name in project:
            _gen_projected(schema, e, name, node, project[name])
            continue
        template = e.const(dict.fromkeys(f["name"] for f in node["fields"]), "T")
        e.line(0, f"def {schema.function('dec', name)}(data, pos, end):")
        e.line(1, f"r = {template}.copy()")
        for group in _chunks(node["fields"]):
            depth = 1
            if len(group) > 1:
                e.line(1, f"if data.startswith({bytes(len(group))!r}, pos):")
                e.line(2, f"pos += {len(group)}")
                e.line(1, "else:")
                depth = 2
            for field in group:
                _dec_value(schema, e, field["type"], f"r[{field['name']!r}]", depth, none_preset=True)
        e.line(1, "return r, pos")
        e.line(0, "")


def _gen_projected(schema: _Schema, e: _Emitter, name: str, node: dict[str, Any], wanted: tuple[str, ...]) -> None:
    """A reader of record ``name`` that returns the tuple of the ``wanted`` fields' values and builds nothing else.

    Why: a consumer that reads a dozen of 33 fields (the worker's fold) pays for a dict per event and a store per
    field it never reads. Every other field is still *checked* exactly as the full decoder checks it (varints,
    union and enum indexes, UTF-8 of strings: ``isascii`` first, the decode only for non-ASCII text), so the two
    readers accept and reject exactly the same bytes; only what is kept differs.
    """
    fields = {f["name"] for f in node["fields"]}
    unknown = [w for w in wanted if w not in fields]
    if unknown or len(set(wanted)) != len(wanted):
        raise ValueError(f"projection of {name}: unknown or repeated fields {unknown or list(wanted)}")
    e.line(0, f"def {schema.function('dec', name)}(data, pos, end):")
    _dec_projected(schema, e, node, wanted, "r", 1)
    e.line(1, "return r, pos")
    e.line(0, "")


def _dec_projected(schema: _Schema, e: _Emitter, node: dict[str, Any], wanted: tuple[str, ...], target: str,
                   depth: int) -> None:
    """The body of a projected record's reader at ``depth``, leaving the tuple in ``target`` (also inlined into
    the loop of an array of such records)."""
    local = {w: e.var("f") for w in wanted}
    base = depth
    for group in _chunks(node["fields"]):
        depth = base
        kept = [local[f["name"]] for f in group if f["name"] in local]
        if len(group) > 1:
            e.line(base, f"if data.startswith({bytes(len(group))!r}, pos):")
            e.line(base + 1, f"pos += {len(group)}")
            if kept:
                e.line(base + 1, f"{' = '.join(kept)} = None")
            e.line(base, "else:")
            depth = base + 1
        for field in group:
            if field["name"] in local:
                _dec_value(schema, e, field["type"], local[field["name"]], depth)
            else:
                _skip_value(schema, e, field["type"], depth)
    e.line(base, f"{target} = ({', '.join(local[w] for w in wanted)},)")


def _skip_value(schema: _Schema, e: _Emitter, s: Any, depth: int) -> None:
    """Code that checks one ``s`` at ``pos`` as :func:`_dec_value` would and advances ``pos``, keeping nothing
    where that is cheaper (strings, bytes, fixed, unions of them); other types are decoded into a throwaway."""
    if isinstance(s, list):
        u = e.var("u")
        e.line(depth, f"{u} = data[pos]")
        for i, branch in enumerate(s):
            e.line(depth, f"{'if' if i == 0 else 'elif'} {u} == {2 * i}:")
            e.line(depth + 1, "pos += 1")
            _skip_value(schema, e, branch, depth + 1)
        e.line(depth, "else:")
        e.line(depth + 1, f"{u}, pos = _union_index(data, pos, {len(s)})")
        if len(s) == 1:
            _skip_value(schema, e, s[0], depth + 1)
            return
        e.line(depth + 1, f"if {u} == 0:")
        _skip_value(schema, e, s[0], depth + 2)
        e.line(depth + 1, "else:")
        _skip_value(schema, e, s[1], depth + 2)
        return
    node = schema.resolve(s)
    t = node["type"] if isinstance(node, dict) else node
    if t == "null":
        e.line(depth, "pass")
    elif t in ("string", "bytes"):
        n = e.var("n")
        _dec_len(e, n, depth)
        e.line(depth, f"{n} += pos")
        if t == "string":  # invalid UTF-8 raises as in the full decoder; ASCII (the usual text) needs no decode
            e.line(depth, f"if not data[pos:{n}].isascii(): data[pos:{n}].decode()")
        e.line(depth, f"pos = {n}")
    elif t == "fixed":
        e.line(depth, f"pos += {node['size']}")
    elif t == "long":  # a timestamp's 8-byte varint: its continuation bits checked in one read, nothing decoded
        e.line(depth, f"if pos + 8 <= end and _unpack_q(data, pos)[0] & {_STOP8:#x} == {_CONT[8]:#x}:")
        e.line(depth + 1, "pos += 8")
        e.line(depth, "else:")
        _dec_value(schema, e, s, e.var("_skipped"), depth + 1)
    else:
        _dec_value(schema, e, s, e.var("_skipped"), depth)


def _dec_long(e: _Emitter, target: str, depth: int, slow: str = "_read_long", eight: bool = False) -> None:
    """One- and two-byte varints from tables; with ``eight``, also the 8-byte varint of every timestamp
    (2**48 <= |t| < 2**55 µs, i.e. 1978..3111) inline: one 64-bit read, three mask-and-shift steps."""
    b = e.var("b")
    e.line(depth, f"{b} = data[pos]")
    e.line(depth, f"if {b} < 128:")
    e.line(depth + 1, f"{target} = _ZZ_DEC[{b}]")
    e.line(depth + 1, "pos += 1")
    e.line(depth, "elif data[pos + 1] < 128:")
    e.line(depth + 1, f"{target} = _ZZ_DEC2[({b} & 127) | (data[pos + 1] << 7)]")
    e.line(depth + 1, "pos += 2")
    if eight:
        x = e.var("q")
        e.line(depth, f"elif pos + 8 <= end and ({x} := _unpack_q(data, pos)[0]) & {_STOP8:#x} == {_CONT[8]:#x}:")
        e.line(depth + 1, f"{x} &= {_KEEP[8]:#x}")
        e.line(depth + 1, f"{x} = ({x} & {_G1A & _MASK64:#x}) | (({x} >> 1) & {_G1B & _MASK64:#x})")
        e.line(depth + 1, f"{x} = ({x} & {_G2A & _MASK64:#x}) | (({x} >> 2) & {_G2B & _MASK64:#x})")
        e.line(depth + 1, f"{x} = ({x} & {_G3A & _MASK64:#x}) | (({x} >> 4) & {_G3B & _MASK64:#x})")
        e.line(depth + 1, f"{target} = ({x} >> 1) ^ -({x} & 1)")
        e.line(depth + 1, "pos += 8")
    e.line(depth, "else:")
    e.line(depth + 1, f"{target}, pos = {slow}(data, pos)")


def _dec_len(e: _Emitter, target: str, depth: int) -> None:
    e.line(depth, f"{target} = _LEN1[data[pos]]")
    e.line(depth, f"if {target} < 0:")
    e.line(depth + 1, f"{target}, pos = _read_len(data, pos)")
    e.line(depth, "else:")
    e.line(depth + 1, "pos += 1")


def _dec_value(schema: _Schema, e: _Emitter, s: Any, target: str, depth: int, none_preset: bool = False) -> None:
    """Code that decodes one ``s`` at ``pos`` into ``target`` (any assignment target) and advances ``pos``.

    ``none_preset``: the target already holds None, so a null needs no assignment.
    """
    if isinstance(s, list):
        # One-byte indexes inline; a padded (multi-byte) varint index is legal Avro but rare: read it out of line
        # and repeat the branch code rather than slow down every field.
        u = e.var("u")
        e.line(depth, f"{u} = data[pos]")
        for i, branch in enumerate(s):
            e.line(depth, f"{'if' if i == 0 else 'elif'} {u} == {2 * i}:")
            e.line(depth + 1, "pos += 1")
            _dec_value(schema, e, branch, target, depth + 1, none_preset)
        e.line(depth, "else:")
        e.line(depth + 1, f"{u}, pos = _union_index(data, pos, {len(s)})")
        if len(s) == 1:
            _dec_value(schema, e, s[0], target, depth + 1, none_preset)
            return
        e.line(depth + 1, f"if {u} == 0:")
        _dec_value(schema, e, s[0], target, depth + 2, none_preset)
        e.line(depth + 1, "else:")
        _dec_value(schema, e, s[1], target, depth + 2, none_preset)
        return
    node = schema.resolve(s)
    t = node["type"] if isinstance(node, dict) else node
    if t == "null":
        e.line(depth, "pass" if none_preset else f"{target} = None")
    elif t == "boolean":
        b = e.var("b")
        e.line(depth, f"{b} = data[pos]")
        e.line(depth, "pos += 1")
        e.line(depth, f"if {b} > 1: raise _bad('boolean byte', {b})")
        e.line(depth, f"{target} = {b} == 1")
    elif t == "long":
        _dec_long(e, target, depth, eight=True)
    elif t == "int":
        _dec_long(e, target, depth, "_read_int")
    elif t in ("float", "double"):
        # struct.error when fewer bytes remain: the caller reports it as truncation
        e.line(depth, f"{target} = {'_unpack_f' if t == 'float' else '_unpack_d'}(data, pos)[0]")
        e.line(depth, f"pos += {4 if t == 'float' else 8}")
    elif t in ("string", "bytes", "fixed"):
        # A slice past the end comes back short without an error; pos still moves by the full length, so the
        # next read fails or decode()'s final ``pos > end`` check reports the truncation.
        n = e.var("n")
        if t == "fixed":
            e.line(depth, f"{n} = pos + {node['size']}")
        else:
            _dec_len(e, n, depth)
            e.line(depth, f"{n} += pos")
        e.line(depth, f"{target} = data[pos:{n}]{'.decode()' if t == 'string' else ''}")
        e.line(depth, f"pos = {n}")
    elif t == "enum":
        i = e.var("i")
        symbols = e.const(tuple(node["symbols"]), "S")
        _dec_long(e, i, depth)
        e.line(depth, f"if not 0 <= {i} < {len(node['symbols'])}: raise _bad('enum index out of range', {i})")
        e.line(depth, f"{target} = {symbols}[{i}]")
    elif t == "record":
        name = node["name"]
        if name in schema.project and name not in schema.inlining:  # the call and the (tuple, pos) pair saved
            schema.inlining.add(name)
            _dec_projected(schema, e, node, schema.project[name], target, depth)
            schema.inlining.discard(name)
        else:
            e.line(depth, f"{target}, pos = {schema.function('dec', name)}(data, pos, end)")
    elif t in ("array", "map"):
        c = e.var("c")
        x = e.var("x")
        item = node["items"] if t == "array" else node["values"]
        min_size = schema.min_size(item) + (1 if t == "map" else 0)
        a = e.var("a")
        e.line(depth, f"{a} = {'[]' if t == 'array' else '{}'}")
        e.line(depth, "while True:")
        _dec_long(e, c, depth + 1)
        e.line(depth + 1, f"if {c} == 0: break")
        e.line(depth + 1, f"if {c} < 0:")
        e.line(depth + 2, f"{c} = -{c}")
        e.line(depth + 2, "pos = _read_long(data, pos)[1]  # block size in bytes, not needed")
        if min_size:
            e.line(depth + 1, f"if {c} * {min_size} > end - pos: raise AvroDecodeError(_TRUNCATED)")
        else:
            e.line(depth + 1, f"if {c} > {_MAX_ZERO_SIZE_ITEMS}: raise _bad('block count', {c})")
        e.line(depth + 1, f"for _ in range({c}):")
        if t == "array":
            _dec_value(schema, e, item, x, depth + 2)
            e.line(depth + 2, f"{a}.append({x})")
        else:
            k = e.var("k")
            _dec_value(schema, e, "string", k, depth + 2)
            _dec_value(schema, e, item, x, depth + 2)
            e.line(depth + 2, f"{a}[{k}] = {x}")
        e.line(depth, f"{target} = {a}")
    else:  # pragma: no cover - _Schema admits nothing else
        raise UnsupportedSchema(f"cannot decode {t!r}")


# -- diagnosis of encoding failures (slow path, mirrors the generated checks) -------------------------------------


def _explain(schema: _Schema, s: Any, v: Any, path: str) -> tuple[str, str] | None:
    """(field path, message) for the first value that does not fit, or None."""
    if isinstance(s, list):
        if v is None and "null" in s:
            return None
        other = [b for b in s if b != "null"]
        if not other:
            return path, f"expected null, got {_describe(v)}"
        return _explain(schema, other[0], v, path)
    node = schema.resolve(s)
    t = node["type"] if isinstance(node, dict) else node
    if v is None and t != "null":
        return path, f"expected {_type_name(node)}, got None (field is required)"
    if t == "null":
        return None if v is None else (path, f"expected null, got {_describe(v)}")
    if t == "boolean":
        return None if isinstance(v, bool) else (path, f"expected boolean, got {_describe(v)}")
    if t in ("int", "long"):
        if not isinstance(v, int) or isinstance(v, bool):
            return path, f"expected {t} (an int), got {_describe(v)}"
        lo, hi = (INT_MIN, INT_MAX) if t == "int" else (LONG_MIN, LONG_MAX)
        return None if lo <= v <= hi else (path, f"{v} is out of the Avro {t} range [{lo}, {hi}]")
    if t in ("float", "double"):
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        return None if ok else (path, f"expected {t}, got {_describe(v)}")
    if t == "string":
        if not isinstance(v, str):
            return path, f"expected string, got {_describe(v)}"
        try:
            v.encode()
        except UnicodeEncodeError as exc:
            return path, f"string is not encodable as UTF-8 ({exc.reason})"
        return None
    if t == "bytes":
        return None if isinstance(v, (bytes, bytearray)) else (path, f"expected bytes, got {_describe(v)}")
    if t == "fixed":
        if isinstance(v, (bytes, bytearray)) and len(v) == node["size"]:
            return None
        return path, f"expected {node['size']} bytes ({node['name']}), got {_describe(v)}"
    if t == "enum":
        if isinstance(v, str) and str.__str__(v) in node["symbols"]:
            return None
        return path, f"{_describe(v)} is not a symbol of {node['name']}"
    if t == "record":
        if not isinstance(v, Mapping):
            return path, f"expected a dict ({node['name']}), got {_describe(v)}"
        for field in node["fields"]:
            name = field["name"]
            sub = f"{path}.{name}" if path else name
            if name not in v and "default" not in field:
                if isinstance(field["type"], list) and "null" in field["type"]:
                    continue
                return sub, "required field is missing"
            value = v.get(name, _python_default(schema, field["type"], field.get("default")))
            found = _explain(schema, field["type"], value, sub)
            if found:
                return found
        return None
    if t == "array":
        if not isinstance(v, (list, tuple)):
            return path, f"expected a list, got {_describe(v)}"
        for i, item in enumerate(v):
            found = _explain(schema, node["items"], item, f"{path}[{i}]")
            if found:
                return found
        return None
    if t == "map":
        if not isinstance(v, dict):
            return path, f"expected a dict, got {_describe(v)}"
        for key, item in v.items():
            if not isinstance(key, str):
                return f"{path}[{key!r}]", f"map key must be a string, got {_describe(key)}"
            found = _explain(schema, node["values"], item, f"{path}[{key!r}]")
            if found:
                return found
        return None
    return path, f"unsupported type {t!r}"  # pragma: no cover


def _type_name(node: Any) -> str:
    return node if isinstance(node, str) else node.get("name", node["type"])


def _describe(v: Any) -> str:
    text = repr(v)
    return f"{type(v).__name__} {text[:60] + '...' if len(text) > 63 else text}"


# -- public entry point -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompiledCodec:
    """Encoder and decoder of Avro bodies (no framing) for one schema.

    ``encode(datum, head=b"")`` returns ``head`` + the body; ``decode(data, pos)`` returns ``(datum, end)`` where
    ``end`` is the offset after the body (the caller decides whether trailing bytes are an error).
    """

    encode: Callable[..., bytes]
    decode: Callable[[bytes, int], tuple[Any, int]]
    source: str


def compile_schema(schema_json: Any, project: Mapping[str, tuple[str, ...]] | None = None) -> CompiledCodec:
    """Generate, compile and return the codec for ``schema_json`` (a JSON schema without logical types).

    ``project`` maps full record names to field names: ``decode`` then returns each such record as the tuple of
    those fields' values, in that order, and builds none of its other fields (it still checks their bytes, so it
    raises exactly where the full decoder raises). ``encode`` is unaffected (it takes dicts).
    """
    schema = _Schema(schema_json)
    project = dict(project or {})
    missing = [name for name in project if name not in schema.named or schema.named[name]["type"] != "record"]
    if missing:
        raise ValueError(f"projection of records the schema does not define: {missing}")
    schema.project = project
    e = _Emitter()
    _gen_encoder(schema, e)
    _gen_decoder(schema, e, project)
    root = schema.root
    e.line(0, "def encode(datum, head=b''):")
    e.line(1, "out = [head]")
    e.line(1, "ap = out.append")
    e.line(1, "try:")
    _enc_value(schema, e, root, "datum", 2)
    e.line(1, "except Exception as exc:")
    e.line(2, "raise _diagnose(datum, exc) from None")
    e.line(1, "return b''.join(out)")
    e.line(0, "")
    e.line(0, "def decode(data, pos=0):")
    e.line(1, "end = len(data)")
    e.line(1, "try:")
    _dec_value(schema, e, root, "datum", 2)
    e.line(1, "except AvroDecodeError:")
    e.line(2, "raise")
    e.line(1, "except (IndexError, _StructError):")
    e.line(2, "raise AvroDecodeError(_TRUNCATED) from None")
    e.line(1, "except UnicodeDecodeError as exc:")
    e.line(2, "raise AvroDecodeError(f'invalid UTF-8 in a string: {exc.reason}') from None")
    e.line(1, "except RecursionError:")
    e.line(2, "raise AvroDecodeError('records nested too deeply') from None")
    e.line(1, "if pos > end:")
    e.line(2, "raise AvroDecodeError(_TRUNCATED)")
    e.line(1, "return datum, pos")
    source = "\n".join(e.lines) + "\n"

    def diagnose(datum: Any, exc: BaseException) -> EncodeError:
        found = _explain(schema, root, datum, "")
        if found:
            return EncodeError(*found)
        return EncodeError("", f"cannot encode: {type(exc).__name__}: {exc}")

    namespace: dict[str, Any] = {
        "_U": _U,
        "_ZZ": _ZZ,
        "_INT_ONLY": {int},
        "_ZZ_DEC": _ZZ_DEC,
        "_ZZ_DEC2": _ZZ_DEC2,
        "_LEN1": _LEN1,
        "_unpack_q": _unpack_q,
        "_union_index": _union_index,
        "_StructError": struct.error,
        "_uvarint": _uvarint,
        "_enc_long": _enc_long,
        "_LOW14": _LOW14,
        "_HIGH": _HIGH,
        "_high_varint": _high_varint,
        "_enc_int": _enc_int,
        "_enc_bytes": _enc_bytes,
        "_pack_f": struct.Struct("<f").pack,
        "_pack_d": struct.Struct("<d").pack,
        "_unpack_f": struct.Struct("<f").unpack_from,
        "_unpack_d": struct.Struct("<d").unpack_from,
        "_read_uvarint": _read_uvarint,
        "_read_long": _read_long,
        "_read_int": _read_int,
        "_read_len": _read_len,
        "_bad": _bad,
        "_Wrong": _Wrong,
        "_wrong": _wrong,
        "_PreEncoded": PreEncoded,
        "_TRUNCATED": _TRUNCATED,
        "AvroDecodeError": AvroDecodeError,
        "_diagnose": diagnose,
        **e.consts,
    }
    label = root if isinstance(root, str) else "union" if isinstance(root, list) else root["type"]
    exec(compile(source, f"<avro codec {label}>", "exec"), namespace)
    encode = namespace["encode"]
    node = schema.resolve(root)
    if isinstance(node, dict) and node["type"] == "record":
        encode = _keyed_encoder(schema, node, namespace, encode)
    return CompiledCodec(encode, namespace["decode"], source)


_KEYED_AFTER = 8  # a key set is compiled once seen this often (a stream of ever new key sets stays generic)
_KEYED_MAX = 256  # compiled key sets kept per codec (then the cache starts over)


def _keyed_encoder(schema: _Schema, node: dict[str, Any], namespace: dict[str, Any],
                   generic: Callable[..., bytes]) -> Callable[..., bytes]:
    """``encode`` for a record root, specialised per key set of the datum dict.

    A producer hands over dicts of a handful of shapes (one per kind of event), each with the same keys in the
    same order, and an AgentEvent has 33 fields of which a dozen are usually absent. For a key set seen often,
    code generated for exactly those keys fetches the present fields with ``d[name]`` and writes the absent
    ones as one constant (the null branch, what fastavro writes for a missing nullable field); the type checks
    of present fields are the generic ones, so the bytes are the same. Anything else (not a dict, a key set not
    seen often yet, a missing field that is required or has a non-null default, a value the code rejects)
    goes through the generic encoder, which also produces the diagnosis.
    """
    compiled: dict[tuple[Any, ...], Callable[..., bytes] | None] = {}
    seen: dict[tuple[Any, ...], int] = {}

    def encode(datum: Any, head: bytes = b"") -> bytes:
        if datum.__class__ is dict:
            keys = tuple(datum)
            fn = compiled.get(keys)
            if fn is not None:
                try:
                    return fn(datum, head)  # type: ignore[no-any-return]
                except Exception:  # let the generic encoder raise the diagnosed EncodeError
                    return generic(datum, head)
            if keys not in compiled:
                n = seen.get(keys, 0) + 1
                if n < _KEYED_AFTER:
                    if len(seen) >= 16 * _KEYED_MAX:
                        seen.clear()
                    seen[keys] = n
                else:
                    seen.pop(keys, None)
                    if len(compiled) >= _KEYED_MAX:
                        compiled.clear()
                    compiled[keys] = _compile_keyed(schema, node, keys, namespace)
        return generic(datum, head)

    return encode


def _enc_expr(schema: _Schema, e: _Emitter, s: Any, v: str, cache: str | None = None) -> str | None:
    """One expression whose value is the encoding of ``v`` (a local variable) as ``s``, raising where
    :func:`_enc_value`'s statements raise and giving the same bytes; None for a type written by statements (records,
    arrays, maps). The per-key-set encoder joins these in one ``b"".join`` of a tuple: no ``append`` call per
    field and per length prefix, which was most of the per-field cost (cachegrind, bench_publish --replay).

    ``cache``: the name of the field's string cache (a dict: text -> its encoding, index included), for a field
    of type string or ``[null, string]``. Tenants, services, tool names, models, statuses and payload texts repeat
    from event to event: a hit is one dict lookup instead of encode, len, a table and a concatenation. Only exact
    ``str`` values are stored and looked up (a str subclass or an object equal to a str is encoded each time); the
    cache keeps the first :data:`_STR_CACHE_MAX` texts of at most :data:`_STR_CACHE_CHARS` characters and then
    stops growing (a field of unique values, an event id, costs one failed lookup)."""
    if isinstance(s, list):
        if len(s) == 1:
            inner = _enc_expr(schema, e, s[0], v)
            return None if inner is None else f"(b'\\x00' + {inner})"
        null_index = s.index("null")
        other = s[1 - null_index]
        index = _U[2 * (1 - null_index)]
        null = _U[2 * null_index]
        other_type = schema.resolve(other)
        if other_type == "string":
            table = e.const(_prefixed(index), "P")
            b, n = e.var("b"), e.var("n")
            fresh = (f"({table}[{n}] if ({n} := len({b} := {v}.encode())) < {_PREFIXED} else "
                     f"{index!r} + _uvarint(2 * {n})) + {b}")
            if cache is None:
                return f"({null!r} if {v} is None else {fresh})"
            return f"({null!r} if {v} is None else {_cached(cache, v, fresh)})"
        inner = _enc_expr(schema, e, other, v)
        if inner is None:
            return None
        if other_type in ("long", "int"):
            table = e.const(_prefixed(index), "P")
            return (f"({null!r} if {v} is None else {table}[{v}] if {v}.__class__ is int and -{_PREFIXED} <= {v} < "
                    f"{_PREFIXED} else {index!r} + {inner})")
        return f"({null!r} if {v} is None else {index!r} + {inner})"
    node = schema.resolve(s)
    t = node["type"] if isinstance(node, dict) else node
    if t == "null":
        return f"(b'' if {v} is None else _wrong())"
    if t == "boolean":
        return f"(b'\\x01' if {v} is True else b'\\x00' if {v} is False else _wrong())"
    if t == "int":
        return f"(_ZZ[{v}] if {v}.__class__ is int and -{_HALF} <= {v} < {_HALF} else _enc_int({v}))"
    if t == "long":
        q = e.var("q")
        return (f"(_ZZ[{v}] if {v}.__class__ is int and -{_HALF} <= {v} < {_HALF} else "
                f"_LOW14[({q} := {v} << 1) & 0x3fff] + (_U[{q}] if ({q} := {q} >> 14) < {_TABLE_SIZE} else "
                f"_HIGH.get({q}) or _high_varint({q})) if {v}.__class__ is int and 0 <= {v} < {1 << 62:#x} else "
                f"_enc_long({v}))")
    if t in ("float", "double"):
        pack = "_pack_f" if t == "float" else "_pack_d"
        return f"(_wrong() if {v}.__class__ is bool else {pack}({v}))"
    if t == "string":
        b, n = e.var("b"), e.var("n")
        fresh = f"(_ZZ[{n}] if ({n} := len({b} := {v}.encode())) < {_HALF} else _uvarint(2 * {n})) + {b}"
        return f"({fresh})" if cache is None else f"({_cached(cache, v, fresh)})"
    if t == "bytes":
        return f"_enc_bytes({v})"
    if t == "enum":
        table = e.const({sym: _uvarint(2 * i) for i, sym in enumerate(node["symbols"])}, "E")
        return f"({table}.get({v}) or _enc_enum({v}, {table}))"
    if t == "fixed":
        return (f"(bytes({v}) if isinstance({v}, (bytes, bytearray)) and len({v}) == {node['size']} "
                f"else _wrong())")
    return None


def _wrong() -> Any:
    raise _Wrong


_STR_CACHE_MAX = 1024  # texts kept per field (the first ones seen; then the cache stops growing)
_STR_CACHE_CHARS = 128  # longer texts are encoded each time


def _cached(cache: str, v: str, fresh: str) -> str:
    """The expression: ``v``'s encoding from ``cache``, else ``fresh`` (an expression encoding ``v``), stored when
    ``v`` is exactly a str, short, and the cache not full. ``s_`` holds the exact-str test between the two."""
    return (f"({cache}.get({v}) if (s_ := {v}.__class__ is str) else None) or "
            f"({cache}.setdefault({v}, {fresh}) if s_ and len({v}) <= {_STR_CACHE_CHARS} and len({cache}) < "
            f"{_STR_CACHE_MAX} else {fresh})")


def _compile_keyed(schema: _Schema, node: dict[str, Any], keys: tuple[Any, ...],
                   base: dict[str, Any]) -> Callable[..., bytes] | None:
    """The encoder of ``node`` for dicts with exactly ``keys``, or None when the generic one must run.

    Fields whose type has an expression form (:func:`_enc_expr`: scalars and ``[null, scalar]``, every field of an
    AgentEvent) become items of one tuple joined once; constant runs (absent fields, all-None chunks) are one item;
    other fields are written by statements between such joins."""
    present = {k for k in keys if isinstance(k, str)}
    e = _Emitter()
    e.line(0, "def encode(d, head):")
    e.line(1, "out = [head]")
    e.line(1, "ap = out.append")
    # every value in one C-level unpack of d.values() (the keys are ``keys``, in this order), not a d[name] each;
    # a dict changed meanwhile (another size) raises and takes the generic encoder
    slot = {k: e.var("v") for k in keys if isinstance(k, str)}
    e.line(1, f"{', '.join(slot.get(k, '_') if isinstance(k, str) else '_' for k in keys)}, = d.values()")
    items: list[str] = []  # expressions of the fields since the last statement-written one

    def flush_items() -> None:
        if items:
            e.line(1, f"ap(b''.join(({', '.join(items)},)))")
            items.clear()

    constant = bytearray()  # what absent fields write, between present ones
    run: list[dict[str, Any]] = []  # consecutive present fields, chunked like the generic encoder's
    statements: list[list[dict[str, Any]]] = []  # groups written by statements (not expressions)

    def flush_run() -> None:
        for group in _chunks(run):
            names = [slot[field["name"]] for field in group]
            exprs = []
            for field, v in zip(group, names, strict=True):
                t = field["type"]
                cache = None
                if ("string" in map(schema.resolve, t)) if isinstance(t, list) else schema.resolve(t) == "string":
                    caches = base.setdefault("_string_caches", {})  # per field, shared by the key sets' encoders
                    cache = e.var("_C")
                    e.consts[cache] = caches.setdefault(field["name"], {})
                exprs.append(_enc_expr(schema, e, t, v, cache))
            if any(x is None for x in exprs):
                flush_items()
                statements.append(group)
                _enc_group(schema, e, group, names)
                continue
            items.extend(exprs)  # one item per field: no concatenation (a None is a constant item)
        run.clear()

    for field in node["fields"]:
        t = field["type"]
        if field["name"] in present:
            if constant:
                items.append(repr(bytes(constant)))
                constant.clear()
            run.append(field)
            continue
        if field.get("default") is not None or not (isinstance(t, list) and "null" in t):
            return None  # a missing field that takes a value: the generic encoder handles (or rejects) it
        flush_run()
        constant += _U[2 * t.index("null")]
    flush_run()
    if constant:
        items.append(repr(bytes(constant)))
    if not statements:  # every field an expression: no list, one join
        del e.lines[1:3]  # no out list, no ap
        e.line(1, f"return b''.join((head, {', '.join(items)}))" if items else "return head")
    else:
        flush_items()
        e.line(1, "return b''.join(out)")
    namespace = {**base, **e.consts}
    exec(compile("\n".join(e.lines) + "\n", "<avro codec keyed>", "exec"), namespace)
    return namespace["encode"]  # type: ignore[no-any-return]
