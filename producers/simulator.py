"""A deterministic fleet of simulated Agentao agents, and the ground truth of what it sent.

Why: the stream processors must be checked against known answers. :class:`FleetSimulator` generates complete
AgentEvent dicts (every field of ``schemas/agent_event.avsc``) for many tenants, services, users and sessions,
in global event-time order, from a seed alone: event ids, session/turn/call ids and event times come from seeded
``random.Random`` instances and a simulated clock, never from the wall clock. Scripted incidents
(:mod:`producers.incidents`) bend one tenant's traffic for a while. The ground truth
(:mod:`producers.ground_truth`) is counted from the events themselves, so it can never disagree with what was sent.

Events follow Agentao 0.5.17's transport order and data keys (see ``reference/agentao.md`` §2), mapped to typed
fields + ``payload`` by :mod:`producers.mapping` exactly as the bridge maps real ones. Per turn::

    turn_begin
      per LLM iteration: [model_changed] turn_start [compaction_started context_compressed compaction_settled]
                         llm_call_started llm_call_delta [llm_retry ...] [thinking] llm_text* llm_call_completed
        tool batch:      (tool_confirmation confirm_resolved [turn_start{display_reset}])* per call needing approval
                         tool_start [tool_output*] tool_complete per call (concurrent when >= 2 calls)
                         | tool_start agent_start (turn_start tool_start tool_complete ...)* agent_end tool_complete
                         tool_result per call, in plan order;  [skill_activated] [memory_write]
    turn_end (duration_ms measured by the host)

and ``session_start`` / ``session_end`` around a session's turns. A sub-agent's forwarded ``tool_start`` names the
tool ``"[codebase-investigator 2/100] read_file"`` in its payload (``tool_name`` carries the bare name, as the
bridge's mapping strips the label); sub-agent LLM calls are not forwarded by Agentao, so they are not in the
stream. Streamed text deltas are coalesced into at most four ``llm_text`` events per call. ``llm_call_completed``
carries the call's ``model`` in the typed field (Agentao puts it only on ``llm_call_started``; a bridge stamps it).
The run is cut at ``start + duration`` by event time: sessions then open stay open (no ``session_end``). Sessions
under way when the run starts open with ``session_start{resumed: true}`` and a history drawn from the steady state,
so token use per window is stationary from the first window (a spike detector needs that). A stuck turn loops on
one cheap tool until the tenant's ``max_iterations``; most users then abandon the session.

What the truth counts, and how, is :mod:`producers.ground_truth`'s.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
import random
import string
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from producers.ground_truth import US, TruthCounter, expected_alerts, iso, write_json
from producers.incidents import Incident, TenantEffects, resolve_tenants
from producers.mapping import confirm_fields, fields_from_agentao, payload_text
from schemas import contract

MS = 1_000
DEFAULT_START_US = 1_767_225_600 * US  # 2026-01-01T00:00:00Z
DEFAULT_RATE_PER_TENANT = 50.0  # simulated events/s per tenant when no rate is given
# Measured mean events per simulated second of one always-busy session slot (think time included); turns a
# target fleet rate into a number of concurrent session slots (tests/test_simulator.py checks it stays about right).
EVENTS_PER_SLOT_S = 0.94

# -- the traffic model -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolProfile:
    """Latency is log-normal (median, sigma); ``fail_rate`` is the chance the tool raises."""

    name: str
    median_ms: float
    sigma: float
    fail_rate: float
    confirm: bool
    output_tokens: int
    error_class: str
    error: str


TOOLS: dict[str, ToolProfile] = {t.name: t for t in (
    ToolProfile("read_file", 12, 0.6, 0.0010, False, 1500, "UnicodeDecodeError",
                "'utf-8' codec can't decode byte 0x89 in position 0: invalid start byte"),
    ToolProfile("list_directory", 8, 0.5, 0.0005, False, 300, "PermissionError", "[Errno 13] Permission denied"),
    ToolProfile("glob", 35, 0.7, 0.0005, False, 250, "OSError", "[Errno 36] File name too long"),
    ToolProfile("search_file_content", 110, 0.8, 0.0015, False, 900, "TimeoutError", "search timed out after 30s"),
    ToolProfile("write_file", 18, 0.5, 0.0010, True, 60, "OSError", "[Errno 28] No space left on device"),
    ToolProfile("replace", 22, 0.5, 0.0010, True, 80, "OSError", "[Errno 30] Read-only file system"),
    ToolProfile("run_shell_command", 1400, 1.1, 0.0030, True, 700, "TimeoutExpired",
                "Command timed out after 120 seconds"),
    ToolProfile("web_fetch", 850, 0.8, 0.0040, True, 2000, "ConnectError", "[Errno 111] Connection refused"),
    ToolProfile("web_search", 1100, 0.6, 0.0030, False, 800, "HTTPStatusError",
                "Server error '502 Bad Gateway' for url 'https://search.internal/api'"),
    ToolProfile("save_memory", 6, 0.4, 0.0005, False, 30, "OperationalError", "database is locked"),
    ToolProfile("todo_write", 4, 0.4, 0.0005, False, 60, "ValueError", "todo list must not be empty"),
    ToolProfile("activate_skill", 25, 0.5, 0.0005, False, 1200, "FileNotFoundError", "SKILL.md not found"),
    ToolProfile("agent_codebase_investigator", 0, 0, 0.0050, False, 1800, "RuntimeError", "sub-agent crashed"),
    ToolProfile("agent_generalist", 0, 0, 0.0050, False, 1500, "RuntimeError", "sub-agent crashed"),
)}
SUBAGENT_TOOLS = {"agent_codebase_investigator": "codebase-investigator", "agent_generalist": "generalist"}
SUBAGENT_READ_TOOLS = ("read_file", "search_file_content", "glob", "list_directory")


@dataclass(frozen=True)
class ServiceProfile:
    """One kind of deployment: its system prompt size, tool mix, skills and what users ask it."""

    kind: str
    system_tokens: int
    tool_weights: tuple[tuple[str, int], ...]
    skills: tuple[str, ...]
    prompts: tuple[str, ...]


SERVICE_CATALOG: tuple[ServiceProfile, ...] = (
    ServiceProfile("code-assistant", 5200, (
        ("read_file", 30), ("search_file_content", 14), ("glob", 8), ("list_directory", 5), ("replace", 12),
        ("write_file", 5), ("run_shell_command", 20), ("todo_write", 3), ("agent_codebase_investigator", 2),
        ("activate_skill", 1)), ("code-review", "test-writer"),
        ("Fix the failing test in tests/test_api.py", "Add type hints to utils.py", "Why is the build red?",
         "Refactor the config loader to use dataclasses", "Find where the session cookie is set")),
    ServiceProfile("support-bot", 3600, (
        ("web_search", 15), ("web_fetch", 10), ("read_file", 20), ("search_file_content", 15), ("save_memory", 6),
        ("run_shell_command", 12), ("activate_skill", 2)), ("refund-policy", "escalation"),
        ("Customer says the invoice total is wrong", "How do I reset my password?", "Order 1182 never arrived",
         "Summarise this ticket thread", "Can I change the billing email?")),
    ServiceProfile("data-analyst", 4400, (
        ("read_file", 25), ("run_shell_command", 30), ("write_file", 10), ("glob", 8), ("list_directory", 6),
        ("activate_skill", 2), ("agent_generalist", 1)), ("xlsx", "sql-analyst"),
        ("Plot weekly signups from signups.csv", "Which region grew fastest last quarter?",
         "Clean the null rows in orders.parquet", "Compute churn by cohort")),
    ServiceProfile("research-agent", 3000, (
        ("web_search", 30), ("web_fetch", 25), ("save_memory", 8), ("read_file", 10), ("write_file", 5),
        ("run_shell_command", 8), ("agent_generalist", 2)), ("citations",),
        ("Compare the three vector databases we shortlisted", "What changed in the EU AI Act this year?",
         "Collect pricing pages of our competitors")),
    ServiceProfile("ops-runbook", 2800, (
        ("run_shell_command", 40), ("read_file", 20), ("search_file_content", 10), ("web_fetch", 5),
        ("todo_write", 5)), ("k8s-triage",),
        ("Disk is 95% full on db-2", "Restart the stuck ingest worker", "Why are 502s up on the gateway?",
         "Rotate the staging TLS certificate")),
)


@dataclass(frozen=True)
class ModelProfile:
    name: str
    ttft_ms: float
    tokens_per_s: float
    token_scale: float = 1.0
    reasoning: bool = False
    cache_writes: bool = False  # Anthropic-style cache_creation_tokens
    reports_reasoning: bool = True


MODELS: dict[str, ModelProfile] = {m.name: m for m in (
    ModelProfile("gpt-4.1", 450, 90),
    ModelProfile("gpt-4.1-mini", 300, 140),
    ModelProfile("o4-mini", 900, 120, reasoning=True),
    ModelProfile("claude-sonnet-4-5", 700, 75, 1.1, cache_writes=True, reports_reasoning=False),
    ModelProfile("claude-haiku-4-5", 350, 150, 1.1, cache_writes=True, reports_reasoning=False),
    ModelProfile("deepseek-chat", 600, 60),
    ModelProfile("qwen3-coder-plus", 500, 80),
)}
_MODEL_SETS: tuple[tuple[tuple[str, int], ...], ...] = (
    (("gpt-4.1", 6), ("gpt-4.1-mini", 3), ("o4-mini", 1)),
    (("claude-sonnet-4-5", 7), ("claude-haiku-4-5", 3)),
    (("deepseek-chat", 5), ("gpt-4.1-mini", 5)),
    (("claude-sonnet-4-5", 4), ("gpt-4.1", 4), ("qwen3-coder-plus", 2)),
    (("qwen3-coder-plus", 6), ("o4-mini", 2), ("gpt-4.1-mini", 2)),
)

TENANT_NAMES = ("acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "wonka", "tyrell", "cyberdyne",
                "soylent", "aperture", "vandelay", "oscorp", "massive", "gringotts", "monarch", "nakatomi",
                "dunder", "pied-piper")

# Baseline behaviour (per event or decision); incidents override some of them for one tenant.
BASE_LOOP_RATE = 0.0005  # turns stuck until max_iterations
ABANDON_AFTER_BAILOUT = 0.7  # sessions closed by their user right after a max_iterations bailout
BASE_5XX, BASE_429, BASE_CONN = 0.0004, 0.0008, 0.0004  # per HTTP attempt
ITERATION_WEIGHTS = ((1, 12), (2, 30), (3, 25), (4, 16), (5, 10), (6, 7))  # LLM iterations in a normal turn
CALLS_PER_BATCH = ((1, 60), (2, 25), (3, 10), (4, 5))
COMPACT_AT = 60_000
TURN_HISTORY_GROWTH = 3_300  # median history tokens a turn adds (measured from the model below)
CACHE_TTL_US = 300 * US


@dataclass(frozen=True)
class TenantProfile:
    """One customer: how many sessions it runs at once, its services, models and permission habits."""

    name: str
    slots: int
    services: tuple[tuple[str, ServiceProfile], ...]
    models: tuple[tuple[str, int], ...]
    users: int
    max_iterations: int
    permission_mode: str
    reject_rate: float
    timeout_rate: float
    confirm_timeout_s: float
    temperature: float


def build_tenants(seed: int, tenants: int | Sequence[str], services: int | Sequence[str],
                  rate: float | None) -> list[TenantProfile]:
    """Tenant profiles, largest first; sizes fall off like 1/(i+1)^0.6 and sum to ``rate`` events/s."""
    names = list(tenants) if not isinstance(tenants, int) else [
        TENANT_NAMES[i] if i < len(TENANT_NAMES) else f"tenant-{i:03d}" for i in range(tenants)]
    if not names or len(set(names)) != len(names):
        raise ValueError("tenants must be a positive count or a list of distinct names")
    n = len(names)
    total_rate = rate if rate is not None else DEFAULT_RATE_PER_TENANT * n
    if total_rate <= 0:
        raise ValueError("rate must be positive")
    weights = [1 / (i + 1) ** 0.6 for i in range(n)]
    total_slots = total_rate / EVENTS_PER_SLOT_S
    rng = random.Random(f"{seed}/tenants")
    out = []
    for i, name in enumerate(names):
        if isinstance(services, int):
            if services < 1:
                raise ValueError("services must be >= 1")
            svc = tuple((SERVICE_CATALOG[(i + k) % len(SERVICE_CATALOG)].kind,
                         SERVICE_CATALOG[(i + k) % len(SERVICE_CATALOG)]) for k in range(services))
        else:
            svc = tuple((s, _service_profile(s)) for s in services)
            if not svc:
                raise ValueError("services must not be empty")
        out.append(TenantProfile(
            name=name,
            slots=max(1, round(total_slots * weights[i] / sum(weights))),
            services=svc,
            models=_MODEL_SETS[i % len(_MODEL_SETS)],
            users=max(3, round(40 * weights[i])),
            max_iterations=(12, 10, 15)[i % 3],
            permission_mode="full-access" if i % 4 == 3 else "workspace-write",
            reject_rate=round(rng.uniform(0.03, 0.08), 4),
            timeout_rate=round(rng.uniform(0.002, 0.006), 4),
            confirm_timeout_s=(30.0, 20.0, 30.0)[i % 3],
            temperature=(0.2, 0.0, 0.7, 0.3)[i % 4],
        ))
    return out


def top_tool(tenant: TenantProfile) -> str:
    """The tool with the largest expected share of the tenant's calls (services weigh equally; no sub-agents)."""
    share: Counter[str] = Counter()
    for _, svc in tenant.services:
        total = sum(w for _, w in svc.tool_weights)
        for tool, w in svc.tool_weights:
            if tool not in SUBAGENT_TOOLS:
                share[tool] += w / total
    return max(sorted(share), key=lambda t: share[t])


def _service_profile(name: str) -> ServiceProfile:
    for s in SERVICE_CATALOG:
        if s.kind == name:
            return s
    digest = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")
    return SERVICE_CATALOG[digest % len(SERVICE_CATALOG)]


# -- event construction ----------------------------------------------------------------------------------------

_TEMPLATE: dict[str, Any] = dict.fromkeys(contract.event_field_names())
_TEMPLATE["schema_version"] = contract.current().version
_ALNUM = string.ascii_letters + string.digits


def _uuid(rng: random.Random) -> str:
    """A uuid4-shaped id from a seeded generator (Agentao's session/turn/child ids are uuid4)."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _lognormal(rng: random.Random, median: float, sigma: float) -> float:
    return median * math.exp(rng.gauss(0.0, sigma)) if sigma > 0 else median


def _session_turns(rng: random.Random) -> int:
    return min(25, 1 + int(rng.expovariate(1 / 5)))


def _pick(rng: random.Random, weighted: Sequence[tuple[Any, int]]) -> Any:
    return rng.choices([v for v, _ in weighted], [w for _, w in weighted])[0]


@dataclass
class _LlmResult:
    ok: bool
    message: str = ""


class _Session:
    """One agent session: a generator of its events, in order, with a gap-free seq from 1."""

    def __init__(self, sim: FleetSimulator, tenant: TenantProfile, rng: random.Random, t_us: int,
                 resumed: bool) -> None:
        self.sim, self.tenant, self.rng, self.t = sim, tenant, rng, t_us
        self.effects = sim._effects.get(tenant.name) or TenantEffects()
        svc_name, self.svc = tenant.services[rng.randrange(len(tenant.services))]
        self.tools = [t for t, _ in self.svc.tool_weights]
        self.seq = 0
        self.last_t = 0
        self.session_id = _uuid(rng)
        self.turn_id: str | None = None
        self.base_model = _pick(rng, tenant.models)
        self.model = self.base_model
        user = f"{tenant.name}-user-{rng.randrange(tenant.users):03d}"
        self.base = dict(_TEMPLATE, tenant=tenant.name, session_id=self.session_id, service=svc_name,
                         agent_name=f"{svc_name}-agent", user_id=user)
        self.resumed = resumed
        self.n_turns = _session_turns(rng)
        self.hist = self.n_msgs = 0
        if resumed:
            # A session already under way when the run starts: draw where a random moment finds one (a long
            # session is likelier to be under way; it is somewhere in its middle), so the fleet starts in its
            # steady state instead of with every history empty.
            while rng.random() >= self.n_turns / 25:
                self.n_turns = _session_turns(rng)
            done = rng.randrange(self.n_turns)
            self.n_turns -= done
            for _ in range(done):
                self.hist += int(_lognormal(rng, TURN_HISTORY_GROWTH, 0.6))
                if self.svc.system_tokens + self.hist > COMPACT_AT:
                    self.hist = rng.randint(6_000, 10_000)
            self.n_msgs = 8 * done
        self.prev_hist = self.hist
        # a resumed session's prefix is in the provider's cache from its calls before the run
        self.last_call_us: int | None = t_us if resumed and self.hist else None
        self.active_skills: list[str] = []
        self.memory_version = 0
        self.terse = False  # tool results of the current turn are short (a stuck loop)
        self.bailed_out = False  # the last turn hit max_iterations
        self.prompt_hash = hashlib.sha256(f"{tenant.name}/{svc_name}".encode()).hexdigest()[:16]
        self.tools_hash = hashlib.sha256(",".join(sorted(self.tools)).encode()).hexdigest()[:16]

    # -- helpers

    def ev(self, type_: str, data: dict[str, Any] | None = None, **typed: Any) -> dict[str, Any]:
        if self.t <= self.last_t:  # one session's event times strictly increase
            self.t = self.last_t + 1
        self.last_t = self.t
        self.seq += 1
        ev = self.base.copy()
        if data is not None:
            ev.update(fields_from_agentao(type_, data))
        if typed:
            ev.update(typed)
        ev["event_id"] = f"{self.rng.getrandbits(128):032x}"
        ev["event_time"] = self.t
        ev["producer_time"] = self.t + self.rng.randint(300, 25_000)
        ev["seq"] = self.seq
        ev["type"] = type_
        ev["turn_id"] = self.turn_id
        return ev

    def wait_ms(self, ms: float) -> None:
        self.t += max(1, int(ms * MS))

    def at(self, t_us: int) -> None:
        self.t = max(t_us, self.t + 1)

    def offset_s(self) -> float:
        return (self.t - self.sim.start_us) / US

    def _call_id(self) -> str:
        return "call_" + "".join(self.rng.choices(_ALNUM, k=24))

    # -- the session

    def run(self) -> Iterator[dict[str, Any]]:
        rng, started = self.rng, self.t
        yield self.ev("session_start", model=self.base_model, payload=payload_text({
            "model": self.base_model, "permission_mode": self.tenant.permission_mode,
            "max_iterations": self.tenant.max_iterations, "resumed": self.resumed,
            "working_directory": f"/srv/{self.tenant.name}/{self.base['service']}"}))
        reason, done = "closed", 0
        while done < self.n_turns:
            if done:
                self.wait_ms(min(300_000, _lognormal(rng, 15_000, 0.8)))
            yield from self.turn()
            done += 1
            if self.bailed_out and rng.random() < ABANDON_AFTER_BAILOUT:
                reason = "abandoned"  # the user gives up on an agent that went round in circles
                break
        self.wait_ms(rng.uniform(50, 2000))
        yield self.ev("session_end", duration_ms=(self.t - started) // MS,
                      payload=payload_text({"turns": done, "reason": reason}))

    def turn(self) -> Iterator[dict[str, Any]]:
        rng, fx = self.rng, self.effects
        self.turn_id = _uuid(rng)
        begin = self.t
        self.hist += int(_lognormal(rng, 60, 0.7))
        self.n_msgs += 1
        yield self.ev("turn_begin", {"user_message": rng.choice(self.svc.prompts)})
        loop = rng.random() < (fx.loop_rate(self.offset_s()) or BASE_LOOP_RATE)
        n_iter = self.tenant.max_iterations if loop else _pick(rng, ITERATION_WEIGHTS)
        loop_tool = next((t for t in ("search_file_content", "web_search", "read_file") if t in self.tools),
                         "list_directory")
        self.terse = loop
        self.bailed_out = False
        status, error, incomplete = "ok", None, None
        final_text, tool_count, finish_missing = "Done.", 0, False
        for it in range(1, n_iter + 1):
            wants_tools = loop or it < n_iter
            self.wait_ms(rng.uniform(0.5, 4))
            yield from self.maybe_swap_model()
            yield self.ev("turn_start", {})
            if self.svc.system_tokens + self.hist > COMPACT_AT:
                yield from self.compact()
            result = yield from self.llm_call(it, wants_tools)
            if not result.ok:
                incomplete, final_text = "llm_error", f"[LLM API error: {result.message}]"
                break
            r = rng.random()
            if r < 0.002:
                status, error, final_text = "cancelled", "user-cancel", "[Interrupted by user]"
                break
            if r < 0.003:
                status, error, final_text = "error", "KeyError: 'choices'", ""
                break
            if not wants_tools:
                final_text = "Here is what I found: ..."
                break
            if loop:  # a stuck agent repeats one cheap call whose short answer does not help it
                calls = [(loop_tool, self._call_id(), _ARGS[loop_tool])]
            else:
                calls = self.plan_calls()
            tool_count += len(calls)
            if loop and it == n_iter:
                incomplete, final_text = "max_iterations", "Maximum tool call iterations reached."
                self.bailed_out = True
                break
            yield from self.tool_batch(calls)
        self.wait_ms(rng.uniform(0.5, 5))
        yield self.ev("turn_end", {
            "final_text": final_text, "status": status, "error": error, "tool_count": tool_count,
            "incomplete_reason": incomplete if status == "ok" else None, "finish_reason_missing": finish_missing,
        }, duration_ms=(self.t - begin) // MS)
        self.turn_id = None

    def maybe_swap_model(self) -> Iterator[dict[str, Any]]:
        swap = self.effects.model_swap(self.offset_s())
        want = swap.model if swap is not None else self.base_model
        if want != self.model:
            yield self.ev("model_changed", {"old_model": self.model, "new_model": want, "base_url_changed": False,
                                            "cause": "set_model"})
            self.model = want
            self.wait_ms(0.2)

    def compact(self) -> Iterator[dict[str, Any]]:
        rng = self.rng
        pre, post = self.hist, rng.randint(6_000, 10_000)
        pre_msgs, post_msgs = self.n_msgs, rng.randint(4, 8)
        yield self.ev("compaction_started", {"trigger": "auto", "kind": "full", "reason": "compression_threshold"})
        started = self.t
        self.wait_ms(_lognormal(rng, 4_000, 0.4))
        dur = (self.t - started) // MS
        yield self.ev("context_compressed", {"type": "full", "reason": "compression_threshold", "pre_msgs": pre_msgs,
                                             "post_msgs": post_msgs, "pre_est_tokens": pre, "post_est_tokens": post,
                                             "duration_ms": dur})
        self.wait_ms(0.3)
        yield self.ev("compaction_settled", {
            "trigger": "auto", "kind": "full", "reason": "compression_threshold", "status": "success",
            "pre_msgs": pre_msgs, "post_msgs": post_msgs, "pre_tokens_history": pre, "post_tokens_history": post,
            "duration_ms": dur, "detail": None})
        self.hist, self.prev_hist, self.n_msgs = post, post, post_msgs
        self.last_call_us = None  # the history prefix changed: the next call cannot hit the cache

    def _attempt_failure(self) -> tuple[int | None, str, str, str] | None:
        """(http status, error class, message, retry reason) of a failed HTTP attempt, or None."""
        burst = self.effects.llm_5xx(self.offset_s())
        r = self.rng.random()
        p5 = burst.error_rate if burst is not None else BASE_5XX
        if r < p5:
            code = self.rng.choice(burst.statuses) if burst is not None else self.rng.choice((500, 502, 503))
            return code, "InternalServerError", (
                f"Error code: {code} - {{'error': {{'message': 'upstream overloaded', 'type': 'server_error'}}}}"), \
                f"status={code}"
        if r < p5 + BASE_429:
            return 429, "RateLimitError", (
                "Error code: 429 - {'error': {'message': 'Rate limit reached', 'type': 'rate_limit_exceeded'}}"), \
                "status=429"
        if r < p5 + BASE_429 + BASE_CONN:
            return None, "APIConnectionError", "Connection error.", "RemoteProtocolError"
        return None

    def llm_call(self, attempt: int, wants_tools: bool) -> Iterator[dict[str, Any]]:
        rng = self.rng
        model = self.model
        mp = MODELS.get(model) or ModelProfile(model, 500, 80)
        swap = self.effects.model_swap(self.offset_s())
        factor = mp.token_scale * (swap.token_factor if swap is not None and swap.model == model else 1.0)
        started = self.t
        yield self.ev("llm_call_started", {
            "attempt": attempt, "model": model, "temperature": self.tenant.temperature, "max_tokens": None,
            "n_messages": self.n_msgs + 1, "n_tool_messages": self.n_msgs // 3, "n_system_reminder_blocks": 1,
            "system_prompt_hash": self.prompt_hash, "tools_hash": self.tools_hash, "tool_count": len(self.tools)})
        self.wait_ms(rng.uniform(0.1, 1))
        yield self.ev("llm_call_delta", {
            "attempt": attempt, "delta_start_index": max(0, self.n_msgs - 2), "total_messages": self.n_msgs + 1,
            "added_messages": [{"role": "user" if attempt == 1 else "tool", "content": "…"}]})
        for http_attempt in range(1, 6):
            failure = self._attempt_failure()
            if failure is None:
                break
            code, err_class, message, reason = failure
            self.wait_ms(_lognormal(rng, 30_000 if code is None else 600, 0.5))
            if http_attempt == 5:
                dur = (self.t - started) // MS
                yield self.ev("llm_call_completed", {
                    "attempt": attempt, "status": "error", "duration_ms": dur, "model_latency_ms": dur,
                    "first_token_ms": None, "first_reasoning_ms": None, "error_class": err_class,
                    "error_message": message, "finish_reason": None, "prompt_tokens": None,
                    "completion_tokens": None, "cache_read_tokens": None, "cache_creation_tokens": None,
                    "reasoning_tokens": None, "streamed": False}, model=model)
                return _LlmResult(False, message)
            delay = min(60.0, 7.5 * 2 ** (http_attempt - 1)) * (1 + 0.3 * rng.random())
            yield self.ev("llm_retry", {"retry": http_attempt, "max_retries": 4, "delay_s": round(delay, 3),
                                        "reason": reason})
            self.wait_ms(delay * 1000)

        # Usage. Cache reads cover the prefix the provider saw last time (system prompt + previous history).
        base_prompt = self.svc.system_tokens + self.hist + rng.randint(20, 150)
        churn = self.effects.cache_hit_rate(self.offset_s())
        first = self.last_call_us is None
        if churn is not None:
            p_hit = churn
        elif first:
            p_hit = 0.8
        elif self.t - self.last_call_us > CACHE_TTL_US:
            p_hit = 0.1
        else:
            p_hit = 0.95 if attempt > 1 else 0.85
        hit = rng.random() < p_hit
        prefix = self.svc.system_tokens + (0 if first else self.prev_hist)
        prompt = int(base_prompt * factor)
        cached = (int(min(prefix, base_prompt) * factor) // 128) * 128 if hit and prompt >= 1024 else 0
        creation = (prompt - cached) if mp.cache_writes else 0
        visible = int(_lognormal(rng, 30 if self.terse else 90 if wants_tools else 350, 0.6))
        reasoning = int(_lognormal(rng, 100 if self.terse else 400, 0.9)) if mp.reasoning else 0
        completion = int((visible + reasoning) * factor)
        reasoning_tokens: int | None = int(reasoning * factor) if mp.reports_reasoning else None

        ttft = _lognormal(rng, mp.ttft_ms, 0.4)
        if mp.reasoning:
            self.wait_ms(ttft * 0.5)
            yield self.ev("thinking", {"text": "Let me look at the relevant files first."})
        self.at(started + int(ttft * MS))
        gen_ms = (visible + reasoning) / mp.tokens_per_s * 1000  # a swapped model's extra tokens cost no time
        chunks = rng.randint(0, 1) if wants_tools else rng.randint(2, 4)
        for k in range(chunks):
            self.wait_ms(gen_ms / (chunks + 1))
            yield self.ev("llm_text", {"chunk": "Looking into it" if k == 0 else " and checking the details."})
        self.at(started + int((ttft + gen_ms) * MS))
        dur = (self.t - started) // MS
        yield self.ev("llm_call_completed", {
            "attempt": attempt, "status": "ok", "duration_ms": dur, "model_latency_ms": dur,
            "first_token_ms": int(ttft), "first_reasoning_ms": int(ttft * 0.5) if mp.reasoning else None,
            "error_class": None, "error_message": None,
            "finish_reason": "tool_calls" if wants_tools else "stop", "finish_reason_reported": True,
            "prompt_tokens": prompt, "completion_tokens": completion, "cache_read_tokens": cached,
            "cache_creation_tokens": creation, "reasoning_tokens": reasoning_tokens}, model=model)
        self.last_call_us = self.t
        self.prev_hist = self.hist
        self.hist += visible
        self.n_msgs += 1
        return _LlmResult(True)

    def plan_calls(self) -> list[tuple[str, str, dict[str, Any]]]:
        rng = self.rng
        n = _pick(rng, CALLS_PER_BATCH)
        picks = [_pick(rng, self.svc.tool_weights) for _ in range(n)]
        for p in picks:
            if p in SUBAGENT_TOOLS:
                return [(p, self._call_id(), {"task": "Map how requests flow from the API layer to storage"})]
        calls = []
        for tool in picks:
            if tool == "activate_skill":
                left = [s for s in self.svc.skills if s not in self.active_skills]
                if not left:
                    tool = "read_file"
                else:
                    calls.append((tool, self._call_id(), {"skill": left[0]}))
                    continue
            calls.append((tool, self._call_id(), _ARGS.get(tool, {})))
        return calls

    def tool_batch(self, calls: list[tuple[str, str, dict[str, Any]]]) -> Iterator[dict[str, Any]]:
        rng, fx = self.rng, self.effects
        verdict: dict[str, str] = {}
        for tool, call_id, args in calls:
            if not (TOOLS[tool].confirm and self.tenant.permission_mode == "workspace-write"):
                continue
            if rng.random() < 0.003:
                verdict[call_id] = "denied"  # a permission rule said no: no confirmation asked
                continue
            self.wait_ms(rng.uniform(0.2, 2))
            yield self.ev("tool_confirmation", {"tool": tool, "args": args, "call_id": call_id})
            asked = self.t
            p_timeout = fx.confirm_timeout_rate(self.offset_s())
            p_timeout = self.tenant.timeout_rate if p_timeout is None else p_timeout
            r = rng.random()
            if r < p_timeout:
                outcome, wait = "timeout", self.tenant.confirm_timeout_s * 1000
            elif r < p_timeout + self.tenant.reject_rate:
                outcome, wait = "reject", min(20_000, _lognormal(rng, 3_000, 0.7))
            else:
                outcome, wait = "allow", min(25_000, _lognormal(rng, 2_500, 0.8))
            self.wait_ms(wait)
            yield self.ev("confirm_resolved", None, **confirm_fields(tool, call_id, outcome, (self.t - asked) // MS))
            if outcome != "allow":
                verdict[call_id] = outcome
                self.wait_ms(0.3)
                yield self.ev("turn_start", {"display_reset": True})

        if len(calls) == 1 and calls[0][0] in SUBAGENT_TOOLS and calls[0][1] not in verdict:
            yield from self.subagent(*calls[0])
            return

        # Execution: one call runs inline, a batch of two or more runs concurrently (events interleave by time).
        t0 = self.t + int(rng.uniform(0.2, 2) * MS)
        planned: list[tuple[int, int, int, str, dict[str, Any]]] = []
        results: list[tuple[str, str, str, int, str | None]] = []
        for k, (tool, call_id, args) in enumerate(calls):
            tp = TOOLS[tool]
            st = t0 + k * rng.randint(50, 400)
            planned.append((st, k, 0, "tool_start", {"tool": tool, "args": args, "call_id": call_id}))
            v = verdict.get(call_id)
            if v is not None:
                err = "denied by permission engine" if v == "denied" else "not approved"
                status, dur, error = "cancelled", 0, err
            else:
                p_fail = fx.tool_failure_rate(tool, (st - self.sim.start_us) / US)
                failed = rng.random() < (tp.fail_rate if p_fail is None else p_fail)
                dur = int(min(120_000.0, _lognormal(rng, tp.median_ms, tp.sigma)))
                status, error = ("error", f"{tp.error_class}: {tp.error}"[:200]) if failed else ("ok", None)
                if tool == "run_shell_command":
                    for j in range(rng.randint(1, 3)):
                        planned.append((st + dur * MS * (j + 1) // 4, k, 1, "tool_output",
                                        {"tool": tool, "chunk": "$ make test\n... ok\n", "call_id": call_id}))
            planned.append((st + max(1, dur) * MS, k, 2, "tool_complete",
                            {"tool": tool, "call_id": call_id, "status": status, "duration_ms": dur,
                             "error": error}))
            results.append((tool, call_id, status, dur, error))
        planned.sort(key=lambda p: (p[0], p[1], p[2]))
        for t, _, _, type_, data in planned:
            self.at(t)
            yield self.ev(type_, data)
        self.wait_ms(rng.uniform(0.2, 2))
        for tool, call_id, status, dur, error in results:
            yield from self.tool_result(tool, call_id, status, dur, error)
        yield from self.state_diffs(calls, results)

    def tool_result(self, tool: str, call_id: str, status: str, dur: int, error: str | None
                    ) -> Iterator[dict[str, Any]]:
        median = 40 if self.terse else TOOLS[tool].output_tokens
        out_tokens = int(min(10_000, _lognormal(self.rng, median, 0.8))) if status == "ok" else 20
        content = f"Error: {error}" if error else f"<{tool} output, {out_tokens * 4} chars>"
        yield self.ev("tool_result", {
            "tool": tool, "call_id": call_id, "content": content,
            "content_hash": hashlib.sha256(content.encode()).hexdigest(), "original_chars": out_tokens * 4,
            "saved_to_disk": False, "disk_path": None, "status": status, "duration_ms": dur, "error": error})
        self.hist += out_tokens
        self.n_msgs += 1

    def state_diffs(self, calls: list[tuple[str, str, dict[str, Any]]],
                    results: list[tuple[str, str, str, int, str | None]]) -> Iterator[dict[str, Any]]:
        ok = {call_id for _, call_id, status, _, _ in results if status == "ok"}
        for tool, call_id, args in calls:
            if tool == "activate_skill" and call_id in ok and args["skill"] not in self.active_skills:
                self.active_skills.append(args["skill"])
                self.wait_ms(0.1)
                yield self.ev("skill_activated", {"skill": args["skill"]})
        saved = sum(1 for tool, call_id, _ in calls if tool == "save_memory" and call_id in ok)
        if saved:
            before = self.memory_version
            self.memory_version += saved
            self.wait_ms(0.1)
            yield self.ev("memory_write", {"version_before": before, "version_after": self.memory_version,
                                           "total_entries": 10 + self.memory_version})

    def subagent(self, tool: str, call_id: str, args: dict[str, Any]) -> Iterator[dict[str, Any]]:
        rng = self.rng
        name, task = SUBAGENT_TOOLS[tool], args["task"]
        child = _uuid(rng)
        started = self.t
        yield self.ev("tool_start", {"tool": tool, "args": args, "call_id": call_id})
        self.wait_ms(rng.uniform(1, 5))
        yield self.ev("agent_start", {"agent": name, "task": task[:80], "max_turns": 100, "child_task_id": child})
        child_started, n_turns, n_tools = self.t, rng.randint(2, 6), 0
        for turn in range(1, n_turns + 1):
            self.wait_ms(rng.uniform(1, 4))
            yield self.ev("turn_start", {"child_task_id": child})
            self.wait_ms(_lognormal(rng, 2_500, 0.5))  # the child's LLM call (not forwarded)
            if turn == n_turns:
                break
            for _ in range(rng.randint(1, 3)):
                sub_tool, sub_call = rng.choice(SUBAGENT_READ_TOOLS), self._call_id()
                yield self.ev("tool_start", {"tool": f"[{name} {turn}/100] {sub_tool}", "args": _ARGS[sub_tool],
                                             "call_id": sub_call, "child_task_id": child})
                tp = TOOLS[sub_tool]
                dur = int(_lognormal(rng, tp.median_ms, tp.sigma))
                p_fail = self.effects.tool_failure_rate(sub_tool, self.offset_s())
                failed = rng.random() < (tp.fail_rate if p_fail is None else p_fail)
                self.wait_ms(max(1, dur))
                yield self.ev("tool_complete", {
                    "tool": sub_tool, "call_id": sub_call, "status": "error" if failed else "ok", "duration_ms": dur,
                    "error": f"{tp.error_class}: {tp.error}"[:200] if failed else None, "child_task_id": child})
                n_tools += 1
        crashed = rng.random() < TOOLS[tool].fail_rate
        self.wait_ms(rng.uniform(1, 5))
        end_data: dict[str, Any] = {"agent": name, "state": "failed" if crashed else "completed", "turns": n_turns,
                                    "tool_calls": n_tools, "tokens": rng.randint(3_000, 30_000),
                                    "duration_ms": (self.t - child_started) // MS,
                                    "error": "RuntimeError" if crashed else None, "child_task_id": child}
        yield self.ev("agent_end", end_data)
        self.wait_ms(rng.uniform(0.5, 3))
        dur = (self.t - started) // MS
        status, error = ("error", f"RuntimeError: {TOOLS[tool].error}") if crashed else ("ok", None)
        yield self.ev("tool_complete", {"tool": tool, "call_id": call_id, "status": status, "duration_ms": dur,
                                        "error": error})
        self.wait_ms(rng.uniform(0.2, 2))
        yield from self.tool_result(tool, call_id, status, dur, error)


_ARGS: dict[str, dict[str, Any]] = {
    "read_file": {"file_path": "src/app/config.py"},
    "list_directory": {"path": "src/app"},
    "glob": {"pattern": "**/*.py"},
    "search_file_content": {"pattern": "session_cookie", "path": "src"},
    "write_file": {"file_path": "report.md", "content": "…"},
    "replace": {"file_path": "src/app/config.py", "old_string": "timeout=5", "new_string": "timeout=30"},
    "run_shell_command": {"command": "make test", "description": "run the test suite"},
    "web_fetch": {"url": "https://example.com/pricing", "prompt": "extract the plan prices"},
    "web_search": {"query": "vector database benchmark 2026"},
    "save_memory": {"fact": "User prefers concise answers"},
    "todo_write": {"todos": [{"content": "reproduce", "status": "in_progress"}]},
}


# -- the fleet -------------------------------------------------------------------------------------------------


class FleetSimulator:
    """Deterministic multi-tenant Agentao traffic over ``[start_us, start_us + duration_s)`` of event time.

    ``tenants``: a count or distinct names (largest first); ``services``: per-tenant count (picked from
    :data:`SERVICE_CATALOG`) or names; ``rate``: target fleet events per *simulated* second (default
    ``DEFAULT_RATE_PER_TENANT`` per tenant); ``incidents``: from :mod:`producers.incidents` (int tenants are
    indexes into :attr:`tenant_names`). Iterating :meth:`events` twice gives identical events.
    """

    def __init__(self, seed: int = 0, tenants: int | Sequence[str] = 6, services: int | Sequence[str] = 2,
                 start_us: int = DEFAULT_START_US, duration_s: float = 600.0, rate: float | None = None,
                 incidents: Iterable[Incident] = ()) -> None:
        if duration_s <= 0:
            raise ValueError("duration_s must be positive")
        self.seed = seed
        self.start_us = int(start_us)
        self.duration_s = float(duration_s)
        self.end_us = self.start_us + int(duration_s * US)
        self.rate = rate
        self.tenants = build_tenants(seed, tenants, services, rate)
        self.tenant_names = [t.name for t in self.tenants]
        self.incidents = resolve_tenants(incidents, self.tenant_names, {t.name: top_tool(t) for t in self.tenants})
        self._effects: dict[str, TenantEffects] = {}
        for inc in self.incidents:
            self._effects.setdefault(str(inc.tenant), TenantEffects()).incidents.append(inc)

    @property
    def expected_rate(self) -> float:
        """Approximate fleet events per simulated second."""
        return sum(t.slots for t in self.tenants) * EVENTS_PER_SLOT_S

    def events(self) -> Iterator[dict[str, Any]]:
        """All events in event-time order (ties by session start order); one session's events keep their order."""
        heap: list[tuple[int, int, dict[str, Any], Iterator[dict[str, Any]]]] = []
        tiebreak = itertools.count()
        for tenant in self.tenants:
            for slot in range(tenant.slots):
                gen = self._slot(tenant, slot)
                ev = next(gen, None)
                if ev is not None and ev["event_time"] < self.end_us:
                    heap.append((ev["event_time"], next(tiebreak), ev, gen))
        heapq.heapify(heap)
        end = self.end_us
        while heap:
            ev, gen = heap[0][2], heap[0][3]
            yield ev
            nxt = next(gen, None)
            if nxt is None or nxt["event_time"] >= end:
                heapq.heappop(heap)
            else:
                heapq.heapreplace(heap, (nxt["event_time"], next(tiebreak), nxt, gen))

    def _slot(self, tenant: TenantProfile, slot: int) -> Iterator[dict[str, Any]]:
        """Sessions run back to back in one slot; the first one is already under way at the start (steady state)."""
        rng = random.Random(f"{self.seed}/{tenant.name}/{slot}")
        t = self.start_us + int(rng.uniform(0, 30) * US)
        n = 0
        while t < self.end_us:
            session = _Session(self, tenant, random.Random(f"{self.seed}/{tenant.name}/{slot}/{n}"), t, n == 0)
            yield from session.run()
            t = session.t + int(_lognormal(rng, 8, 0.7) * US)
            n += 1

    # -- ground truth

    def params(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "start_us": self.start_us, "start": iso(self.start_us), "end_us": self.end_us,
            "end": iso(self.end_us), "duration_s": self.duration_s, "rate": self.rate,
            "tenants": [{"name": t.name, "slots": t.slots, "services": [s for s, _ in t.services],
                         "models": [m for m, _ in t.models], "permission_mode": t.permission_mode,
                         "max_iterations": t.max_iterations} for t in self.tenants],
        }

    def ground_truth(self, window_s: int = 60, events: Iterable[dict[str, Any]] | None = None,
                     counted: TruthCounter | None = None) -> dict[str, Any]:
        """The truth document: counts (from ``counted``, else from ``events``, else regenerated), params,
        incidents and the alerts each must raise."""
        if counted is None:
            counted = TruthCounter(window_s)
            counted.add_all(self.events() if events is None else events)
        truth = counted.result()
        truth["params"] = self.params()
        truth["incidents"] = [{**inc.to_dict(), "rule": inc.rule,
                               "start_us": self.start_us + int(inc.start_s * US),
                               "end_us": self.start_us + int(inc.end_s * US)} for inc in self.incidents]
        truth["alerts"] = expected_alerts(self.incidents, self.start_us, truth)
        return truth

    def write_ground_truth(self, path: str | Path, window_s: int = 60,
                           counted: TruthCounter | None = None) -> dict[str, Any]:
        """Write :meth:`ground_truth` as canonical JSON (sorted keys: same seed, same bytes); returns it."""
        truth = self.ground_truth(window_s, counted=counted)
        write_json(path, truth)
        return truth
