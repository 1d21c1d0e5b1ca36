"""Sub-agent token usage counted exactly once, decided at the source (the bridge sees every event in-process).

Agentao 0.5.17 does not forward a foreground sub-agent's LLM calls to the parent's transport: its usage reaches the
host only as the totals on the terminal ``subagent_lifecycle`` host event (``usage``, the five token counts, the
same numbers Agentao adds to the parent's ``usage_snapshot()``). Every sink counts tokens and cost from
``llm_call_completed`` events only. So, per child run (``child_task_id``):

* each forwarded ``llm_call_completed`` that carries the child's ``child_task_id`` (what a future Agentao may send)
  is counted as the call it is, and its tokens are remembered here;
* when the run's terminal ``subagent_lifecycle`` arrives with ``usage``, the part of it not yet forwarded
  (``usage - forwarded``, per token field, never below 0) is emitted as **one** ``llm_call_completed`` tagged with
  the ``child_task_id`` (model: the last forwarded call's model, else the parent's; ``status`` ok; no duration;
  payload ``_subagent_usage`` says so and how many calls were forwarded). With nothing forwarded it carries the whole
  run's usage; with everything forwarded nothing is emitted;
* a forwarded call of a run already settled (it arrived after the terminal event) is already inside the emitted
  remainder: its token fields are moved into its payload (``_usage_counted_in_subagent_total``) and left null, so
  it is never counted twice (it then counts as a call without usage).

So a delegated turn's tokens (and their cost) equal ``usage_snapshot()`` whether or not the child's calls are
forwarded. The price: without forwarding, a child run appears as one LLM call (its true call count is unknown to the
host), and its remainder is priced as one call (the same as pricing each call, except at a tiered model's prompt-size
cliff). Usage missing from the terminal event (``None``: Agentao could not read it) adds nothing: not known is not 0.
Memory is bounded: at most ``max_runs`` open runs and ``max_runs`` settled ids are remembered (oldest dropped).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from producers.mapping import TOKEN_FIELDS, payload_text

TERMINAL_PHASES = frozenset({"completed", "failed", "cancelled"})


class _Run:
    __slots__ = ("tokens", "calls", "model")

    def __init__(self) -> None:
        self.tokens = [0] * len(TOKEN_FIELDS)
        self.calls = 0
        self.model: str | None = None


class SubagentUsageLedger:
    """Per child run, the usage already forwarded; thread-safe (Agentao calls back from several threads)."""

    def __init__(self, max_runs: int = 1000) -> None:
        self.max_runs = max_runs
        self._open: OrderedDict[str, _Run] = OrderedDict()
        self._settled: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def forwarded(self, fields: dict[str, Any]) -> None:
        """A forwarded child ``llm_call_completed`` (``fields`` has ``child_task_id``); may change ``fields``."""
        child = fields.get("child_task_id")
        if not isinstance(child, str):
            return
        with self._lock:
            if child in self._settled:
                _move_usage_to_payload(fields)
                return
            run = self._open.get(child)
            if run is None:
                run = self._open[child] = _Run()
                if len(self._open) > self.max_runs:
                    self._open.popitem(last=False)
            run.calls += 1
            model = fields.get("model")
            if isinstance(model, str):
                run.model = model
            for i, name in enumerate(TOKEN_FIELDS):
                v = fields.get(name)
                if isinstance(v, int) and v > 0:
                    run.tokens[i] += v

    def settle(self, lifecycle: Mapping[str, Any], parent_model: str | None) -> dict[str, Any] | None:
        """The remainder ``llm_call_completed`` fields for a terminal ``subagent_lifecycle`` (its mapped fields:
        ``child_task_id``, ``status`` = phase, the token fields lifted from ``usage``), or None."""
        child = lifecycle.get("child_task_id")
        phase = lifecycle.get("status")
        if not isinstance(child, str) or phase not in TERMINAL_PHASES:
            return None
        usage = [lifecycle.get(name) for name in TOKEN_FIELDS]
        if all(v is None for v in usage):
            return None  # usage not known: adds nothing (and the run stays open for a later terminal event)
        with self._lock:
            if child in self._settled:
                return None  # a repeated terminal event: already counted
            run = self._open.pop(child, None) or _Run()
            self._settled[child] = None
            if len(self._settled) > self.max_runs:
                self._settled.popitem(last=False)
        rest = [max(0, (v if isinstance(v, int) else 0) - f) for v, f in zip(usage, run.tokens, strict=True)]
        if not any(rest):
            return None
        out: dict[str, Any] = dict(zip(TOKEN_FIELDS, rest, strict=True))
        out.update(model=run.model or parent_model, status="ok", child_task_id=child)
        out["payload"] = payload_text({"_subagent_usage": {
            "source": "subagent_lifecycle", "phase": phase, "forwarded_calls": run.calls,
            "forwarded_tokens": dict(zip(TOKEN_FIELDS, run.tokens, strict=True)),
        }})
        return out


def _move_usage_to_payload(fields: dict[str, Any]) -> None:
    moved = {name: fields.get(name) for name in TOKEN_FIELDS}
    for name in TOKEN_FIELDS:
        fields[name] = None
    payload = fields.get("payload")
    if isinstance(payload, str):
        try:
            payload = json.loads(payload)
        except ValueError:
            payload = {"_payload": payload}
    data = dict(payload) if isinstance(payload, Mapping) else {}
    data["_usage_counted_in_subagent_total"] = moved
    fields["payload"] = payload_text(data)
