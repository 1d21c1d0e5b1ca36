"""All of agentwatch's configuration, in one typed place, read from the environment.

Every setting has an environment variable named like the ones operators already know
(``KAFKA_BOOTSTRAP_SERVERS``, ``SCHEMA_REGISTRY_URL``) or prefixed ``AGENTWATCH_``; the CLI's flags override them.
Lower layers (``producers``, ``streams``, ``sinks``) never read the environment themselves: they take these values
as constructor arguments, so they stay testable and embeddable.

A malformed value raises :class:`ConfigError` naming the variable, when the settings are read rather than deep
inside a command. Secrets (the audit keys) are kept out of every ``repr``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from schemas.redaction import PII_CLASSES
from sinks.archive_store import DEFAULT_MAX_INSTANCES
from sinks.audit_format import decode_key
from sinks.redact import capture_flags

MIN_HMAC_KEY_BYTES = 16


class ConfigError(ValueError):
    """A setting is malformed; the message names the environment variable and says what is expected."""


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _env_opt(name: str) -> str | None:
    return os.environ.get(name) or None


def _env_int(name: str, default: int, minimum: int) -> int:
    text = _env_opt(name)
    return default if text is None else parse_int(text, what=name, minimum=minimum)


def _env_opt_int(name: str, minimum: int) -> int | None:
    text = _env_opt(name)
    return None if text is None else parse_int(text, what=name, minimum=minimum)


def _default_home() -> Path:
    return Path(_env("AGENTWATCH_HOME", str(Path.home() / ".cache" / "agentwatch")))


def parse_int(text: str, *, what: str, minimum: int) -> int:
    """``text`` as a whole number of at least ``minimum``; ConfigError naming ``what`` otherwise."""
    try:
        value = int(text.strip())
    except ValueError:
        raise ConfigError(f"{what} must be a whole number >= {minimum}, not {text!r}") from None
    if value < minimum:
        raise ConfigError(f"{what} must be a whole number >= {minimum}, not {text!r}")
    return value


def parse_flags(spec: str) -> dict[str, bool]:
    """``"capture_full_llm_io=true,capture_llm_delta=false"`` (a bare name means true) to a dict."""
    out: dict[str, bool] = {}
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        name, _, value = item.partition("=")
        value = value.strip().lower() or "true"
        if value not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            raise ValueError(f"{name.strip()}={value}: expected true or false")
        out[name.strip()] = value in ("true", "1", "yes", "on")
    return out


def parse_list(text: str) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ``("a", "b", "c")``."""
    return tuple(t.strip() for t in text.split(",") if t.strip())


@dataclass(frozen=True)
class TopicNames:
    events: str = "agentwatch.events"
    dead_letter: str = "agentwatch.events.dlq"
    metrics: str = "agentwatch.metrics"
    alerts: str = "agentwatch.alerts"
    # The streams worker's internal topic between its two stages; "" means "<events>.partials".
    partials: str = ""
    # Events later than the worker's allowed lateness (and partials of sealed windows); "" means "<events>.late".
    late: str = ""
    # The audit log's external witness of signed heads (compacted); "" means "<prefix>.audit.anchors", the prefix
    # being the events topic without its ".events".
    audit_anchors: str = ""

    def __post_init__(self) -> None:
        if not self.partials:
            object.__setattr__(self, "partials", f"{self.events}.partials")
        if not self.late:
            object.__setattr__(self, "late", f"{self.events}.late")
        if not self.audit_anchors:
            base = self.events[: -len(".events")] if self.events.endswith(".events") else self.events
            object.__setattr__(self, "audit_anchors", f"{base}.audit.anchors")

    @classmethod
    def from_env(cls) -> TopicNames:
        prefix = _env("AGENTWATCH_TOPIC_PREFIX", "agentwatch")
        return cls(
            events=_env("AGENTWATCH_EVENTS_TOPIC", f"{prefix}.events"),
            dead_letter=_env("AGENTWATCH_DLQ_TOPIC", f"{prefix}.events.dlq"),
            metrics=_env("AGENTWATCH_METRICS_TOPIC", f"{prefix}.metrics"),
            alerts=_env("AGENTWATCH_ALERTS_TOPIC", f"{prefix}.alerts"),
            partials=_env("AGENTWATCH_PARTIALS_TOPIC", f"{prefix}.events.partials"),
            late=_env("AGENTWATCH_LATE_TOPIC", ""),  # "": "<events>.late"
            audit_anchors=_env("AGENTWATCH_AUDIT_ANCHORS_TOPIC", ""),  # "": "<events without .events>.audit.anchors"
        )


@dataclass(frozen=True)
class AuditSettings:
    """The tamper-evident audit log (``agentwatch audit``); the keys never show in a repr.

    ``AGENTWATCH_AUDIT_DIR`` (``None``: ``$AGENTWATCH_HOME/audit``), ``AGENTWATCH_AUDIT_HMAC_KEY`` (the checkpoint
    signing key: its UTF-8 bytes, at least 16), ``AGENTWATCH_AUDIT_ENC_KEY`` (base64 of 32 bytes: AES-256-GCM at
    rest), ``AGENTWATCH_AUDIT_POLICY`` (a YAML policy file), ``AGENTWATCH_AUDIT_BUSINESS_TOOLS`` (comma-separated;
    ``None`` keeps the policy's list), ``AGENTWATCH_AUDIT_MAX_TENANT_BYTES`` (per-tenant size cap),
    ``AGENTWATCH_AUDIT_ANCHORS`` (the external witness of signed heads: ``kafka`` (default, the topic
    ``AGENTWATCH_AUDIT_ANCHORS_TOPIC``), ``kafka:TOPIC``, ``file:PATH``, ``http(s)://URL``, or ``none``).
    """

    dir: Path | None = None
    hmac_key: bytes | None = field(default=None, repr=False)
    enc_key: bytes | None = field(default=None, repr=False)
    policy_file: Path | None = None
    business_tools: tuple[str, ...] | None = None
    max_tenant_bytes: int | None = None
    anchors: str = "kafka"

    def __post_init__(self) -> None:
        if not (self.anchors in ("kafka", "none") or self.anchors.startswith(("kafka:", "file:", "http://",
                                                                               "https://"))):
            raise ConfigError(f"AGENTWATCH_AUDIT_ANCHORS must be kafka, kafka:TOPIC, file:PATH, http(s)://URL or "
                              f"none, not {self.anchors!r}")
        if self.hmac_key is not None and len(self.hmac_key) < MIN_HMAC_KEY_BYTES:
            raise ConfigError(f"AGENTWATCH_AUDIT_HMAC_KEY must be at least {MIN_HMAC_KEY_BYTES} bytes "
                              "(try: openssl rand -base64 32)")
        if self.enc_key is not None and len(self.enc_key) != 32:
            raise ConfigError(f"AGENTWATCH_AUDIT_ENC_KEY must be 32 bytes, got {len(self.enc_key)}")
        if self.max_tenant_bytes is not None and self.max_tenant_bytes < 1:
            raise ConfigError(f"audit max tenant bytes must be at least 1, not {self.max_tenant_bytes}")

    @classmethod
    def from_env(cls) -> AuditSettings:
        hmac_text = _env_opt("AGENTWATCH_AUDIT_HMAC_KEY")
        enc_text = _env_opt("AGENTWATCH_AUDIT_ENC_KEY")
        try:
            enc_key = decode_key(enc_text, what="AGENTWATCH_AUDIT_ENC_KEY") if enc_text else None
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        tools = os.environ.get("AGENTWATCH_AUDIT_BUSINESS_TOOLS")
        policy = _env_opt("AGENTWATCH_AUDIT_POLICY")
        directory = _env_opt("AGENTWATCH_AUDIT_DIR")
        return cls(
            dir=Path(directory) if directory else None,
            hmac_key=hmac_text.encode() if hmac_text else None,
            enc_key=enc_key,
            policy_file=Path(policy) if policy else None,
            business_tools=parse_list(tools) if tools else None,
            max_tenant_bytes=_env_opt_int("AGENTWATCH_AUDIT_MAX_TENANT_BYTES", minimum=1),
            anchors=_env("AGENTWATCH_AUDIT_ANCHORS", "kafka"),
        )


@dataclass(frozen=True)
class ReplaySettings:
    """The session replay archive (``agentwatch replay``).

    ``AGENTWATCH_REPLAY_DIR`` (``None``: ``$AGENTWATCH_HOME/replays``), ``AGENTWATCH_REPLAY_MAX_INSTANCES``
    (instances kept per tenant; 0 keeps all), ``AGENTWATCH_REPLAY_CAPTURE_FLAGS`` (Agentao capture flags set
    explicitly, e.g. ``capture_full_llm_io=true``; the rest keep Agentao's defaults),
    ``AGENTWATCH_REPLAY_MAX_TENANT_BYTES`` (per-tenant size cap).
    """

    dir: Path | None = None
    max_instances: int = DEFAULT_MAX_INSTANCES
    capture_flags: Mapping[str, bool] = field(default_factory=dict)
    max_tenant_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.max_instances < 0:
            raise ConfigError(f"replay max instances must be a whole number >= 0, not {self.max_instances}")
        try:
            capture_flags(self.capture_flags)
        except ValueError as exc:
            raise ConfigError(f"replay capture flags: {exc}") from None
        if self.max_tenant_bytes is not None and self.max_tenant_bytes < 1:
            raise ConfigError(f"replay max tenant bytes must be at least 1, not {self.max_tenant_bytes}")

    @classmethod
    def from_env(cls) -> ReplaySettings:
        directory = _env_opt("AGENTWATCH_REPLAY_DIR")
        try:
            flags = parse_flags(os.environ.get("AGENTWATCH_REPLAY_CAPTURE_FLAGS", ""))
            capture_flags(flags)
        except ValueError as exc:
            raise ConfigError(f"AGENTWATCH_REPLAY_CAPTURE_FLAGS: {exc}") from None
        return cls(
            dir=Path(directory) if directory else None,
            max_instances=_env_int("AGENTWATCH_REPLAY_MAX_INSTANCES", DEFAULT_MAX_INSTANCES, minimum=0),
            capture_flags=flags,
            max_tenant_bytes=_env_opt_int("AGENTWATCH_REPLAY_MAX_TENANT_BYTES", minimum=1),
        )


def _env_bool(name: str, default: bool) -> bool:
    text = _env_opt(name)
    if text is None:
        return default
    value = text.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        raise ConfigError(f"{name} must be true or false, not {text!r}")
    return value in ("true", "1", "yes", "on")


@dataclass(frozen=True)
class ProducerSettings:
    """What a publisher does to events before they leave the process (``producers.scrub``; issue 12).

    ``AGENTWATCH_PUBLISH_RAW`` (default false: events are scrubbed and Agentao's capture flags applied; true
    publishes them as given, with a warning), ``AGENTWATCH_CAPTURE_FLAGS`` (Agentao capture flags, e.g.
    ``capture_full_llm_io=true``; the rest keep Agentao's defaults), ``AGENTWATCH_PII_CLASSES`` (comma-separated
    PII classes to redact, ``none`` for none; default all: ``email,card_number``), ``AGENTWATCH_EVIDENCE_PUBLIC_KEY``
    (a PEM X25519 public key file: audited events keep their raw values sealed to it; see docs/evidence-keys.md).
    """

    publish_raw: bool = False
    capture_flags: Mapping[str, bool] = field(default_factory=dict)
    pii_classes: tuple[str, ...] = PII_CLASSES
    evidence_public_key: Path | None = None

    def __post_init__(self) -> None:
        try:
            capture_flags(self.capture_flags)
        except ValueError as exc:
            raise ConfigError(f"producer capture flags: {exc}") from None
        unknown = set(self.pii_classes) - set(PII_CLASSES)
        if unknown:
            raise ConfigError(f"AGENTWATCH_PII_CLASSES: unknown {', '.join(sorted(unknown))} "
                              f"(known: {', '.join(PII_CLASSES)}, or none)")

    @classmethod
    def from_env(cls) -> ProducerSettings:
        try:
            flags = parse_flags(os.environ.get("AGENTWATCH_CAPTURE_FLAGS", ""))
            capture_flags(flags)
        except ValueError as exc:
            raise ConfigError(f"AGENTWATCH_CAPTURE_FLAGS: {exc}") from None
        pii = _env_opt("AGENTWATCH_PII_CLASSES")
        key = _env_opt("AGENTWATCH_EVIDENCE_PUBLIC_KEY")
        return cls(
            publish_raw=_env_bool("AGENTWATCH_PUBLISH_RAW", False),
            capture_flags=flags,
            pii_classes=PII_CLASSES if pii is None else () if pii.strip().lower() == "none" else parse_list(pii),
            evidence_public_key=Path(key) if key else None,
        )

    def publisher_options(self) -> dict[str, object]:
        """``EventPublisher`` keyword arguments for this policy (reads the public key file; ConfigError if bad)."""
        if self.publish_raw:
            return {"publish_raw": True}
        from producers.scrub import Scrubber
        from schemas.evidence import EvidenceSealer, load_public_key

        sealer = None
        if self.evidence_public_key is not None:
            try:
                sealer = EvidenceSealer(load_public_key(self.evidence_public_key.read_bytes()))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"AGENTWATCH_EVIDENCE_PUBLIC_KEY {self.evidence_public_key}: {exc}") from None
        return {"scrubber": Scrubber(self.capture_flags, pii_classes=self.pii_classes, evidence=sealer)}


@dataclass(frozen=True)
class EvidenceSettings:
    """Who can open sealed audit evidence: ``AGENTWATCH_EVIDENCE_PRIVATE_KEYS``, comma-separated PEM X25519 private
    key files (the current key and any retired ones still needed to read old records; docs/evidence-keys.md)."""

    private_keys: tuple[Path, ...] = ()

    @classmethod
    def from_env(cls) -> EvidenceSettings:
        text = _env_opt("AGENTWATCH_EVIDENCE_PRIVATE_KEYS")
        return cls(private_keys=tuple(Path(p) for p in parse_list(text)) if text else ())

DEFAULT_OTLP_TRACES_ENDPOINT = "http://localhost:4318/v1/traces"
# The tenant's view of the shipped Grafana dashboard (deploy/grafana/agentwatch-dashboard.json, uid agentwatch-fleet)
# on the Grafana of docker-compose.yml.
DEFAULT_GENERATOR_URL = "http://localhost:3000/d/agentwatch-fleet/agentwatch?var-tenant={tenant}"


def parse_generator_url(text: str, *, what: str = "AGENTWATCH_GENERATOR_URL") -> str | None:
    """An alert link template (``{tenant}``, ``{alertname}``, ``{tool}``) checked now; ``none`` turns links off."""
    if text.strip().lower() == "none":
        return None
    try:
        text.format(tenant="t", alertname="a", tool="")
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"{what} may use only {{tenant}}, {{alertname}} and {{tool}} (or be none), not {text!r} "
                          f"({type(exc).__name__}: {exc})") from None
    if not text.startswith(("http://", "https://")):
        raise ConfigError(f"{what} must be an http(s) URL template or none, not {text!r}")
    return text


def _env_seconds(name: str, default: float) -> float:
    text = _env_opt(name)
    if text is None:
        return default
    try:
        value = float(text.strip())
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{name} must be a positive number of seconds, not {text!r}")
    return value


def parse_otlp_headers(text: str, *, what: str) -> dict[str, str]:
    """``"api_key=abc,x-tenant=a%20b"`` (the OTLP exporter format: comma-separated, percent-encoded) to a dict."""
    from urllib.parse import unquote

    out: dict[str, str] = {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"{what}: expected key=value pairs separated by commas, not {item!r}")
        out[unquote(name.strip()).lower()] = unquote(value.strip())
    return out


@dataclass(frozen=True)
class TracesSettings:
    """The traces sink (``agentwatch traces run``); the headers (they often carry an API key) never show in a repr.

    The OTLP variables are the OpenTelemetry standard ones: ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (used as is),
    else ``OTEL_EXPORTER_OTLP_ENDPOINT`` + ``/v1/traces``, else ``http://localhost:4318/v1/traces``;
    ``OTEL_EXPORTER_OTLP_TRACES_HEADERS``, else ``OTEL_EXPORTER_OTLP_HEADERS``. The OTel SDK's exporter reads the
    remaining ``OTEL_EXPORTER_OTLP_*`` (time-out, compression, certificates) itself.
    ``AGENTWATCH_TRACES_TURN_TIMEOUT_S`` (default 600): a turn without ``turn_end`` is closed and marked after it;
    ``AGENTWATCH_TRACES_SETTLE_S`` (default 10): how long a turn with a gap in its events waits after ``turn_end``;
    ``AGENTWATCH_TRACES_MAX_OPEN_TURNS`` (default 10000).
    """

    endpoint: str = DEFAULT_OTLP_TRACES_ENDPOINT
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    turn_timeout_s: float = 600.0
    settle_s: float = 10.0
    max_open_turns: int = 10_000

    @classmethod
    def from_env(cls) -> TracesSettings:
        endpoint = _env_opt("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        if endpoint is None:
            base = _env_opt("OTEL_EXPORTER_OTLP_ENDPOINT")
            endpoint = base.rstrip("/") + "/v1/traces" if base else DEFAULT_OTLP_TRACES_ENDPOINT
        if not endpoint.startswith(("http://", "https://")):
            raise ConfigError(f"the OTLP traces endpoint must be an http(s) URL, not {endpoint!r} "
                              "(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT)")
        which = "OTEL_EXPORTER_OTLP_TRACES_HEADERS" if _env_opt("OTEL_EXPORTER_OTLP_TRACES_HEADERS") \
            else "OTEL_EXPORTER_OTLP_HEADERS"
        return cls(
            endpoint=endpoint,
            headers=parse_otlp_headers(_env(which, ""), what=which),
            turn_timeout_s=_env_seconds("AGENTWATCH_TRACES_TURN_TIMEOUT_S", 600.0),
            settle_s=_env_seconds("AGENTWATCH_TRACES_SETTLE_S", 10.0),
            max_open_turns=_env_int("AGENTWATCH_TRACES_MAX_OPEN_TURNS", 10_000, minimum=1),
        )


@dataclass(frozen=True)
class LogsSettings:
    """The per-tenant structured logs (``agentwatch logs run``; issue 10).

    ``AGENTWATCH_LOGS_DIR`` (``None``: ``$AGENTWATCH_HOME/logs``), ``AGENTWATCH_LOGS_RETENTION_DAYS`` (days kept,
    today included; default 14, the seed's minimum viable setup), ``AGENTWATCH_LOGS_GROUP`` (consumer group,
    default ``agentwatch-logs``), ``AGENTWATCH_LOGS_GRACE_S`` (how long after a day's end its file stays open for
    late events before it is gzipped; default 900), ``AGENTWATCH_LOGS_METRICS_PORT`` (``/metrics``; unset: none).
    The scrubbing policy is the producer's (``AGENTWATCH_CAPTURE_FLAGS``, ``AGENTWATCH_PII_CLASSES``).
    """

    dir: Path | None = None
    retention_days: int = 14
    group: str = "agentwatch-logs"
    grace_s: float = 900.0
    metrics_port: int | None = None

    def __post_init__(self) -> None:
        if self.retention_days < 1:
            raise ConfigError(f"logs retention must be at least 1 day, not {self.retention_days}")
        if not self.group:
            raise ConfigError("the logs consumer group must not be empty")

    @classmethod
    def from_env(cls) -> LogsSettings:
        directory = _env_opt("AGENTWATCH_LOGS_DIR")
        return cls(
            dir=Path(directory) if directory else None,
            retention_days=_env_int("AGENTWATCH_LOGS_RETENTION_DAYS", 14, minimum=1),
            group=_env("AGENTWATCH_LOGS_GROUP", "agentwatch-logs"),
            grace_s=_env_seconds("AGENTWATCH_LOGS_GRACE_S", 900.0),
            metrics_port=_env_opt_int("AGENTWATCH_LOGS_METRICS_PORT", minimum=0),
        )


@dataclass(frozen=True)
class Settings:
    """What a deployment configures. ``Settings.from_env()`` is the only place that reads the environment."""

    bootstrap_servers: str = "127.0.0.1:9092"
    schema_registry_url: str | None = None
    topics: TopicNames = field(default_factory=TopicNames)
    events_partitions: int = 6
    replication_factor: int = 1
    home: Path = field(default_factory=_default_home)
    spool_dir: Path | None = None
    tenant: str = "default"
    service: str | None = None
    # A YAML file of negotiated or self-hosted LLM prices that win over genai-prices (schemas/pricing.py);
    # ``--prices FILE`` / ``AGENTWATCH_PRICES_FILE``; None: genai-prices only.
    prices_file: Path | None = None
    # The streams worker's Faust app id (consumer group, changelog topic prefix); "" derives it from the events
    # topic ("agentwatch.events" -> "agentwatch.streams") so unique test topics get a unique group too.
    app_id: str = ""
    audit: AuditSettings = field(default_factory=AuditSettings)
    replay: ReplaySettings = field(default_factory=ReplaySettings)
    # Where HTTP endpoints (/metrics, the worker's web views) listen: loopback unless a deployment opens them
    # (``AGENTWATCH_LISTEN_ADDR=0.0.0.0`` in a container that Prometheus scrapes); they have no authentication.
    listen_addr: str = "127.0.0.1"
    producer: ProducerSettings = field(default_factory=ProducerSettings)
    evidence: EvidenceSettings = field(default_factory=EvidenceSettings)

    traces: TracesSettings = field(default_factory=TracesSettings)
    # The worker's alerts' generatorURL: a template over {tenant}, {alertname}, {tool}; None: no link.
    generator_url: str | None = DEFAULT_GENERATOR_URL
    logs: LogsSettings = field(default_factory=LogsSettings)
    # How long a command waits at start for a Kafka broker to answer before it gives up with a one-line error.
    kafka_startup_timeout_s: float = 10.0
    # The port of a long-running command's /metrics (self-monitoring); None: the command's own default (off for
    # most, 9464 for the exporter). One variable for all: each command runs in its own container or unit.
    metrics_port: int | None = None

    def __post_init__(self) -> None:
        if not self.app_id:
            events = self.topics.events
            base = events[: -len(".events")] if events.endswith(".events") else events
            object.__setattr__(self, "app_id", f"{base}.streams")

    @classmethod
    def from_env(cls) -> Settings:
        home = _default_home()
        return cls(
            bootstrap_servers=_env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
            schema_registry_url=_env_opt("SCHEMA_REGISTRY_URL"),
            topics=TopicNames.from_env(),
            events_partitions=_env_int("AGENTWATCH_EVENTS_PARTITIONS", 6, minimum=1),
            replication_factor=_env_int("AGENTWATCH_REPLICATION_FACTOR", 1, minimum=1),
            home=home,
            spool_dir=Path(_env("AGENTWATCH_SPOOL_DIR", str(home / "spool"))),
            tenant=_env("AGENTWATCH_TENANT", "default"),
            service=_env_opt("AGENTWATCH_SERVICE"),
            prices_file=Path(p) if (p := _env_opt("AGENTWATCH_PRICES_FILE")) else None,
            app_id=_env_opt("AGENTWATCH_APP_ID") or "",
            audit=AuditSettings.from_env(),
            replay=ReplaySettings.from_env(),
            listen_addr=_env("AGENTWATCH_LISTEN_ADDR", "127.0.0.1"),
            producer=ProducerSettings.from_env(),
            evidence=EvidenceSettings.from_env(),

            traces=TracesSettings.from_env(),
            generator_url=parse_generator_url(_env("AGENTWATCH_GENERATOR_URL", DEFAULT_GENERATOR_URL)),
            logs=LogsSettings.from_env(),
            kafka_startup_timeout_s=_env_seconds("AGENTWATCH_KAFKA_STARTUP_TIMEOUT", 10.0),
            metrics_port=_env_opt_int("AGENTWATCH_METRICS_PORT", minimum=0),
        )

    def with_(self, **changes: object) -> Settings:
        """A copy with some values replaced (``None`` values are ignored, so CLI flags left unset fall through)."""
        known = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in changes.items() if k in known and v is not None})
