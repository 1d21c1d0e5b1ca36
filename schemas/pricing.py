"""What an LLM call costs: one pure price function shared by every consumer (worker, ground truth, exporter).

Prices come from Pydantic's ``genai-prices`` package (its bundled, offline snapshot; never fetched at run time), so
cached-input, cache-write and reasoning tokens are priced as the provider prices them, including tiered ("cliff")
prices selected by the call's prompt size and prices that change on a date. A YAML override file
(:func:`load_overrides`) sets negotiated or self-hosted prices per model name and wins over genai-prices.

Semantics of one call (``llm_call_completed``): ``prompt_tokens`` includes ``cache_read_tokens`` and
``cache_creation_tokens``; ``completion_tokens`` includes ``reasoning_tokens`` (the contract's definitions, which are
genai-prices' ``input_tokens``/``output_tokens``). Parts larger than their whole are clamped (cache read first, then
cache creation; reasoning to completion), so hostile counts cannot make a cost negative. The model name is looked up
without a provider (events carry none): genai-prices picks the provider it deems the model's home.

Money is exact under merge: a call's cost is computed in integer atto-USD (1e-18) from per-token rates, rounded
**once per call, half up, to integer nano-USD** (``cost_nusd``, 1e-9 USD), and only those integers are ever summed,
so a window's cost is the same in every merge order and in the independent ground truth. A call whose model has no
price (neither in the overrides nor in genai-prices) costs ``None``: it is counted as *unpriced*, never as 0 USD.
A call that reported no usage costs 0 and is not unpriced (it is counted under ``llm_calls_without_usage``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

NANO_PER_USD = 1_000_000_000
_ATTO_PER_NANO = 1_000_000_000
_ATTO_PER_USD = 10**18
_HALF = _ATTO_PER_NANO // 2
_CACHE_LIMIT = 4096  # distinct model names remembered; beyond it lookups are repeated (slower, same answer)
OVERRIDE_KEYS = ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok", "reasoning_mtok")


class PricesFileError(ValueError):
    """The override file is unreadable or malformed; the message says where and what is expected."""


@dataclass(frozen=True, slots=True)
class Rates:
    """Per-token prices in integer atto-USD for one model (and one prompt-size tier)."""

    input: int
    cache_read: int
    cache_write: int
    output: int
    reasoning: int

    def cost_atto(self, p: int, c: int, cr: int, cw: int, rs: int) -> int:
        return (p - cr - cw) * self.input + cr * self.cache_read + cw * self.cache_write + (
            c - rs
        ) * self.output + rs * self.reasoning


def _atto(usd_per_token: Decimal) -> int:
    """A per-token USD price as integer atto-USD (exact for prices with up to 12 decimals per million tokens)."""
    return int((usd_per_token * _ATTO_PER_USD).to_integral_value())


def clamp_usage(p: int | None, c: int | None, cr: int | None, cw: int | None, rs: int | None) -> tuple[int, ...]:
    """The priced counts: nulls as 0, negatives as 0, parts no larger than their whole."""
    p = max(p or 0, 0)
    c = max(c or 0, 0)
    cr = min(max(cr or 0, 0), p)
    cw = min(max(cw or 0, 0), p - cr)
    rs = min(max(rs or 0, 0), c)
    return p, c, cr, cw, rs


def round_nusd(atto: int) -> int:
    """Integer atto-USD to integer nano-USD, half up (costs are never negative)."""
    return (atto + _HALF) // _ATTO_PER_NANO


class _TieredRates:
    """Rates of one genai-prices ``ModelPrice``: per prompt-size interval (cliff tiers on total input tokens)."""

    __slots__ = ("starts", "rates")

    def __init__(self, model_price: Any) -> None:
        from genai_prices.types import TieredPrices

        starts = sorted(
            {t.start for v in model_price.__dict__.values() if isinstance(v, TieredPrices) for t in v.tiers}
        )
        self.starts = starts
        # interval 0: p <= starts[0] (base); interval i: starts[i-1] < p <= starts[i]
        probes = [1 if not starts or starts[0] >= 1 else 0] + [s + 1 for s in starts]
        self.rates = [self._probe(model_price, n) for n in probes]

    @staticmethod
    def _probe(model_price: Any, n: int) -> Rates:
        """Read the linear per-token rates off genai-prices itself (so its decomposition rules are the ones used)."""
        from genai_prices import Usage

        def cost(**usage: int) -> Decimal:
            return model_price.calc_price(Usage(**usage))["total_price"]

        base = cost(input_tokens=n)
        out = cost(input_tokens=n, output_tokens=1) - base
        reasoning = cost(input_tokens=n, output_tokens=1, output_reasoning_tokens=1) - base
        if n == 0:
            return Rates(0, 0, 0, _atto(out), _atto(reasoning))
        return Rates(
            _atto(base / n),
            _atto(cost(input_tokens=n, cache_read_tokens=n) / n),
            _atto(cost(input_tokens=n, cache_write_tokens=n) / n),
            _atto(out),
            _atto(reasoning),
        )

    def for_prompt(self, p: int) -> Rates:
        i = 0
        for s in self.starts:
            if p > s:
                i += 1
            else:
                break
        return self.rates[i]


class _Known:
    """A model found in genai-prices: its prices, possibly conditional on the call's date or time of day.

    Conditional prices change only on whole UTC minutes (checked here), so the rates of the last minute seen are
    kept: events arrive roughly in time order, and a lookup is then one comparison.
    """

    __slots__ = ("info", "fixed", "by_price", "minute_exact", "last_minute", "last_rates")

    def __init__(self, info: Any) -> None:
        from genai_prices.types import ModelPrice, TimeOfDateConstraint

        self.info = info
        self.fixed = _TieredRates(info.prices) if isinstance(info.prices, ModelPrice) else None
        self.by_price: dict[int, tuple[Any, _TieredRates]] = {}
        self.minute_exact = self.fixed is None and all(
            not isinstance(c, TimeOfDateConstraint)
            or (c.start_time.second, c.start_time.microsecond, c.end_time.second, c.end_time.microsecond) == (0,) * 4
            for c in (cp.constraint for cp in info.prices)
        )
        self.last_minute = -1
        self.last_rates: _TieredRates | None = None

    def rates(self, event_time_us: int) -> _TieredRates:
        if self.fixed is not None:
            return self.fixed
        minute = event_time_us // 60_000_000
        if minute == self.last_minute and self.last_rates is not None:
            return self.last_rates
        when = datetime.fromtimestamp(event_time_us / 1_000_000, tz=UTC)
        price = self.info.get_prices(when)
        hit = self.by_price.get(id(price))
        if hit is None:
            hit = self.by_price[id(price)] = (price, _TieredRates(price))  # keeps price alive: id stays unique
        if self.minute_exact:
            self.last_minute, self.last_rates = minute, hit[1]
        return hit[1]


class PriceTable:
    """Prices of models by the name events carry; ``cost_nusd`` is the one price function every consumer uses."""

    def __init__(self, overrides: Mapping[str, Rates] | None = None, *, use_genai_prices: bool = True) -> None:
        self.overrides = {name.lower(): rates for name, rates in (overrides or {}).items()}
        self.use_genai_prices = use_genai_prices
        self._known: dict[str, _Known | Rates | None] = {}

    def _lookup(self, model: str) -> _Known | Rates | None:
        key = model.lower()
        rates = self.overrides.get(key)
        if rates is not None:
            return rates
        if not self.use_genai_prices:
            return None
        from genai_prices import data_snapshot

        try:
            _provider, info = data_snapshot.get_snapshot().find_provider_model(key, None, None, None)
        except LookupError:
            return None
        return _Known(info)

    def is_priced(self, model: str | None) -> bool:
        return model is not None and self._entry(model) is not None

    def _entry(self, model: str) -> _Known | Rates | None:
        try:
            return self._known[model]
        except KeyError:
            pass
        entry = self._lookup(model)
        if isinstance(entry, _Known) and entry.fixed is not None and not entry.fixed.starts:
            entry = entry.fixed.rates[0]  # one flat price: the hot path then skips the date and tier lookups
        if len(self._known) < _CACHE_LIMIT:
            self._known[model] = entry
        return entry

    def cost_nusd(
        self,
        model: str | None,
        event_time_us: int,
        prompt: int | None,
        completion: int | None,
        cache_read: int | None = None,
        cache_write: int | None = None,
        reasoning: int | None = None,
    ) -> int | None:
        """The call's cost in integer nano-USD, rounded once, half up; ``None`` when the model has no price."""
        entry = self._known.get(model) if model is not None else None  # type: ignore[arg-type]
        if entry is None:
            if model is None:
                return None
            entry = self._entry(model)
            if entry is None:
                return None
        p = prompt or 0
        c = completion or 0
        cr = cache_read or 0
        cw = cache_write or 0
        rs = reasoning or 0
        if p < 0 or c < 0 or cr < 0 or cw < 0 or rs < 0 or cr + cw > p or rs > c:
            p, c, cr, cw, rs = clamp_usage(p, c, cr, cw, rs)
        if entry.__class__ is Rates:
            r = entry
        else:
            tiered = entry.rates(event_time_us)  # type: ignore[union-attr]
            r = tiered.rates[0] if not tiered.starts or p <= tiered.starts[0] else tiered.for_prompt(p)
        # inlined Rates.cost_atto + round_nusd (the worker's hot path)
        atto = (p - cr - cw) * r.input + cr * r.cache_read + cw * r.cache_write + (c - rs) * r.output
        return (atto + rs * r.reasoning + _HALF) // _ATTO_PER_NANO


def nusd_to_usd(nusd: int) -> float:
    """For display and Prometheus (float USD); sums are kept as integers."""
    return nusd / NANO_PER_USD


def _decimal(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise PricesFileError(f"{where}: expected a number of USD per million tokens, got {value!r}")
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise PricesFileError(f"{where}: {value!r} is not a number") from None
    if not d.is_finite() or d < 0:
        raise PricesFileError(f"{where}: a price must be a finite number >= 0, got {value!r}")
    return d


def _per_token(spec: Mapping[str, Any], key: str, where: str, default: Decimal | None) -> Decimal:
    """USD per token of ``spec[key]`` (given per million tokens), else ``default``."""
    if key not in spec and default is not None:
        return default
    return _decimal(spec[key], f"{where}.{key}") / 1_000_000


def parse_overrides(data: Any, source: str = "prices file") -> dict[str, Rates]:
    """Overrides from the parsed YAML: ``{models: {name: {input_mtok, output_mtok, [cache_read_mtok],
    [cache_write_mtok], [reasoning_mtok]}}}`` in USD per million tokens; cache prices default to the input price,
    the reasoning price to the output price."""
    if data is None:
        return {}
    if not isinstance(data, Mapping) or set(data) - {"models"}:
        raise PricesFileError(f"{source}: expected a mapping with the single key 'models'")
    models = data.get("models") or {}
    if not isinstance(models, Mapping):
        raise PricesFileError(f"{source}: 'models' must map model names to prices")
    out: dict[str, Rates] = {}
    for name, spec in models.items():
        where = f"{source}: models.{name}"
        if not isinstance(name, str) or not name:
            raise PricesFileError(f"{source}: model names must be non-empty strings, got {name!r}")
        if not isinstance(spec, Mapping):
            raise PricesFileError(f"{where}: expected a mapping of {', '.join(OVERRIDE_KEYS)}")
        unknown = set(spec) - set(OVERRIDE_KEYS)
        if unknown:
            raise PricesFileError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
        for required in ("input_mtok", "output_mtok"):
            if required not in spec:
                raise PricesFileError(f"{where}: {required} is required")
        inp = _per_token(spec, "input_mtok", where, None)
        outp = _per_token(spec, "output_mtok", where, None)
        if name.lower() in out:
            raise PricesFileError(f"{where}: listed twice (names are case-insensitive)")
        out[name.lower()] = Rates(
            _atto(inp),
            _atto(_per_token(spec, "cache_read_mtok", where, inp)),
            _atto(_per_token(spec, "cache_write_mtok", where, inp)),
            _atto(outp),
            _atto(_per_token(spec, "reasoning_mtok", where, outp)),
        )
    return out


def load_overrides(path: str | Path) -> dict[str, Rates]:
    """Read and check a YAML override file (see :func:`parse_overrides`); raises :class:`PricesFileError`."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PricesFileError(f"cannot read prices file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PricesFileError(f"prices file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return parse_overrides(data, str(path))


def price_table(path: str | Path | None = None) -> PriceTable:
    """genai-prices, with the overrides of ``path`` (``--prices`` / ``AGENTWATCH_PRICES_FILE``) when given."""
    return PriceTable(load_overrides(path) if path else None)


_DEFAULT: PriceTable | None = None


def default_prices() -> PriceTable:
    """The process-wide genai-prices table without overrides (one cache for every default consumer)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = PriceTable()
    return _DEFAULT
