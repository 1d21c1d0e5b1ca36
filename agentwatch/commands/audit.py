"""``agentwatch audit run|verify|prune|show``: the tamper-evident audit log (see :mod:`sinks.audit_log`).

Configuration (read by :class:`agentwatch.config.AuditSettings`; flags override):

* ``AGENTWATCH_AUDIT_DIR``: the audit root (default ``$AGENTWATCH_HOME/audit``).
* ``AGENTWATCH_AUDIT_HMAC_KEY``: the checkpoint signing key (its UTF-8 bytes, at least 16; e.g. the output of
  ``openssl rand -base64 32``). Required to write and to verify (``verify --no-signatures`` checks the hash
  chains only, explicitly).
* ``AGENTWATCH_AUDIT_ENC_KEY``: base64 of 32 bytes: records are encrypted at rest (AES-256-GCM). ``audit run``
  refuses to start without it unless told ``--insecure-plaintext``.
* ``AGENTWATCH_AUDIT_ANCHORS``: where signed heads are published for rollback detection: ``kafka`` (default, the
  compacted topic ``<prefix>.audit.anchors``), ``kafka:TOPIC``, ``file:PATH``, ``http(s)://URL``, or ``none``.
* ``AGENTWATCH_AUDIT_POLICY``: optional YAML file: ``retention_classes``, ``audit_classes``, ``business_tools``.
* ``AGENTWATCH_AUDIT_BUSINESS_TOOLS``: optional comma-separated tool names or patterns (overrides the YAML list).
* ``AGENTWATCH_AUDIT_MAX_TENANT_BYTES``: optional per-tenant size cap.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agentwatch.cli_flags import (
    add_bootstrap_servers,
    add_metrics_port,
    add_run_bounds,
    add_topic,
    check_metrics_port,
    whole_number,
)
from agentwatch.config import Settings, parse_list
from agentwatch.foreground import StatusLine, stop_on_signals
from agentwatch.isotime import parse_utc, utc_iso
from schemas.evidence import EvidenceError, EvidenceOpener, envelope_kid, load_private_key
from sinks.audit_anchor import (
    AnchorError,
    AnchorPublisher,
    FileWitness,
    KafkaWitness,
    Witness,
    newest_per_stream,
    open_witness,
)
from sinks.audit_classify import AUDIT_CLASSES, AuditPolicy, PolicyError
from sinks.audit_format import DecryptError, RecordCipher, event_of
from sinks.audit_log import AuditError, AuditLog
from sinks.audit_source import KafkaTailSource
from sinks.audit_store import iter_records
from sinks.audit_verify import check_anchors, confirm_tails, verify_root


@dataclass(frozen=True)
class AuditOptions:
    """``settings.audit`` with the flags applied and the policy file loaded."""

    root: Path
    hmac_key: bytes | None = field(repr=False)
    enc_key: bytes | None = field(repr=False)
    policy: AuditPolicy
    max_tenant_bytes: int | None
    anchors: str = "kafka"

    @classmethod
    def resolve(cls, args: argparse.Namespace, settings: Settings) -> AuditOptions:
        conf = settings.audit
        root = Path(getattr(args, "dir", None) or conf.dir or settings.home / "audit")
        policy_file = getattr(args, "policy", None) or conf.policy_file
        try:
            data: Any = {}
            if policy_file:
                data = yaml.safe_load(Path(policy_file).read_text()) or {}
                if not isinstance(data, dict):
                    raise PolicyError(f"{policy_file}: expected a mapping at the top level")
            policy = AuditPolicy.from_mapping(data)
            flag_tools = getattr(args, "business_tools", None)
            tools = parse_list(flag_tools) if flag_tools else conf.business_tools
            if tools is not None:
                policy = policy.with_business_tools(tools)
        except (OSError, yaml.YAMLError, PolicyError) as exc:
            raise SystemExit(f"audit policy: {exc}") from None
        cap = getattr(args, "max_tenant_bytes", None) or conf.max_tenant_bytes
        return cls(root, conf.hmac_key, conf.enc_key, policy, cap, conf.anchors)

    def require_key(self) -> bytes:
        if self.hmac_key is None:
            raise SystemExit("set AGENTWATCH_AUDIT_HMAC_KEY (the checkpoint signing key) to write the audit log")
        return self.hmac_key

    def open_log(self, **kwargs: Any) -> AuditLog:
        return AuditLog(self.root, self.require_key(), enc_key=self.enc_key, max_tenant_bytes=self.max_tenant_bytes,
                        **kwargs)


def _witness(spec: str, settings: Settings) -> Witness | None:
    return open_witness(spec, bootstrap_servers=settings.bootstrap_servers,
                        default_topic=settings.topics.audit_anchors)


def _witness_heads(witness: Witness | None) -> dict[tuple[str, str], dict[str, Any]] | None:
    """The newest head per stream the witness holds (a file witness not written yet holds none)."""
    if witness is None or (isinstance(witness, FileWitness) and not witness.path.exists()):
        return None
    return newest_per_stream(witness.read())


def _iso(us: int | None) -> str:
    return "never" if us is None else utc_iso(us)


# -- run ----------------------------------------------------------------------------------------------------------

def precheck_run(args: argparse.Namespace, settings: Settings) -> None:
    """What ``audit run`` needs besides Kafka, checked before waiting for it: keys, a writable root, the port."""
    from agentwatch.startup import StartupError, require_writable_dir

    conf = AuditOptions.resolve(args, settings)
    if conf.hmac_key is None:
        raise StartupError("set AGENTWATCH_AUDIT_HMAC_KEY (the checkpoint signing key, e.g. `openssl rand -base64 "
                           "32`) to write the audit log")
    if conf.enc_key is None and not args.insecure_plaintext:
        raise StartupError("refusing to keep evidence unencrypted: set AGENTWATCH_AUDIT_ENC_KEY (base64 of 32 bytes, "
                           "e.g. `openssl rand -base64 32`), or pass --insecure-plaintext")
    require_writable_dir(conf.root, "audit directory", "--dir / AGENTWATCH_AUDIT_DIR")
    check_metrics_port(args, settings)


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    settings = settings.with_(bootstrap_servers=args.bootstrap_servers)
    conf = AuditOptions.resolve(args, settings)
    topic = args.topic or settings.topics.events
    if conf.enc_key is None and not args.insecure_plaintext:
        print("audit run: refusing to keep evidence unencrypted: set AGENTWATCH_AUDIT_ENC_KEY (base64 of 32 bytes, "
              "e.g. `openssl rand -base64 32`), or pass --insecure-plaintext", file=sys.stderr)
        return 2
    conf.require_key()
    from agentwatch.kafka_log import with_logger
    from agentwatch.selfmon import start_selfmon
    from agentwatch.startup import require_writable_dir

    require_writable_dir(conf.root, "audit directory", "--dir / AGENTWATCH_AUDIT_DIR")
    port = args.metrics_port if args.metrics_port is not None else settings.metrics_port
    mon = start_selfmon("audit", args.group, [topic], port, bootstrap_servers=settings.bootstrap_servers,
                        listen_addr=settings.listen_addr)
    try:
        return _run_audit(args, settings, conf, topic, mon, with_logger())
    finally:
        mon.close()


def _run_audit(args: argparse.Namespace, settings: Settings, conf: AuditOptions, topic: str, mon: Any,
               consumer_config: dict[str, Any]) -> int:
    from sinks.audit_sink import AuditSink  # confluent-kafka only for this subcommand

    try:
        witness = _witness(conf.anchors, settings)
        if isinstance(witness, KafkaWitness):
            witness.check()
        heads = _witness_heads(witness)
    except AnchorError as exc:
        print(f"audit run: {exc}", file=sys.stderr)
        return 2
    anchors = AnchorPublisher(witness) if witness is not None else None
    try:
        log = conf.open_log(fsync=args.fsync, source=KafkaTailSource(settings.bootstrap_servers),
                            on_checkpoint=anchors.publish if anchors is not None else None, witness_heads=heads)
    except AuditError as exc:
        print(f"audit: {exc}", file=sys.stderr)
        return 1
    if not log.encrypted:
        print("audit run: --insecure-plaintext: audit evidence is written UNENCRYPTED", file=sys.stderr)
    print(f"auditing {topic} at {settings.bootstrap_servers} (group {args.group}) into {conf.root}"
          f"{' (encrypted)' if log.encrypted else ''}; signed heads to "
          f"{witness.name if witness is not None else 'no witness (AGENTWATCH_AUDIT_ANCHORS=none)'}", file=sys.stderr)
    for tenant, why in log.recover().items():
        print(f"audit: tenant {tenant!r} refused: {why}; its events are held until this is resolved",
              file=sys.stderr)
    if mon.port is not None:
        print(f"  metrics on http://{settings.listen_addr}:{mon.port}/metrics", file=sys.stderr)
    sink = AuditSink(settings.bootstrap_servers, topic, log, conf.policy, group_id=args.group, anchors=anchors,
                     held_retry_s=args.held_retry, consumer_config=consumer_config)
    next_prune = time.monotonic() + args.prune_interval if args.prune_interval else None

    status = StatusLine()

    def progress(stats: Any) -> None:
        nonlocal next_prune
        status.show(stats.line())
        sink.flush()  # between batches, about once a second: an idle stream's tail is signed within a minute
        if next_prune is not None and time.monotonic() >= next_prune:
            next_prune = time.monotonic() + args.prune_interval
            pruned = log.prune()
            for p in pruned:
                print(f"\n  pruned {p.tenant!r}/{p.stream}/{p.segment} ({p.count} records)", file=sys.stderr)
            if pruned:
                sink.retry_held()  # space came back: isolated tenants may fit again

    # Ctrl-C / SIGTERM: finish the batch, fsync, commit, checkpoint, then exit
    with stop_on_signals() as stop:
        try:
            stats = sink.run(stop=stop, until_end=args.until_end, idle_timeout_s=args.idle_timeout,
                             on_progress=progress)
        except AuditError as exc:
            print(f"\naudit: {exc}\nstopped without committing the current batch; it is re-delivered after a "
                  "restart", file=sys.stderr)
            return 1
        finally:
            log.close()  # seals every stream it loaded
            sink.held.close()
            if anchors is not None and not anchors.close():
                print(f"\naudit: the last signed heads could not be published to {anchors.witness.name} "
                      f"({anchors.pending} stream(s) pending)", file=sys.stderr)
            for r in log.repairs:
                print(f"\n  repaired a torn tail (crash mid-write): {r.path} cut to {r.kept_bytes} bytes "
                      f"({r.removed_bytes} removed)", file=sys.stderr)
    print(f"\r  {stats.line()}", file=sys.stderr)
    if stats.undecodable:
        print("  undecodable: " + ", ".join(f"{k}={v}" for k, v in sorted(stats.undecodable.items())),
              file=sys.stderr)
    if stats.per_class:
        print("  audited: " + ", ".join(f"{k}={v}" for k, v in sorted(stats.per_class.items())), file=sys.stderr)
    held = sink.held.counts()
    if held:
        print("  held (isolated tenants, kept in order for later): "
              + ", ".join(f"{t!r}={n}" for t, n in sorted(held.items())), file=sys.stderr)
    return 0


# -- verify -------------------------------------------------------------------------------------------------------

def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    settings = settings.with_(bootstrap_servers=args.bootstrap_servers)
    conf = AuditOptions.resolve(args, settings)
    if args.decrypt and conf.enc_key is None:
        print("audit verify --decrypt: set AGENTWATCH_AUDIT_ENC_KEY (the key the log was encrypted with)",
              file=sys.stderr)
        return 2
    report = verify_root(conf.root, conf.hmac_key, tenant=args.tenant,
                         enc_key=conf.enc_key if args.decrypt else None, no_signatures=args.no_signatures)
    if args.anchors is not None:
        spec = conf.anchors if args.anchors == "configured" else args.anchors
        try:
            witness = _witness(spec, settings)
            if witness is None:
                raise AnchorError("--anchors needs a witness, not 'none' (kafka, kafka:TOPIC, file:PATH, URL)")
            seen = witness.read()
        except AnchorError as exc:
            print(f"audit verify: {exc}", file=sys.stderr)
            return 2
        report.findings.extend(check_anchors(report, seen, conf.hmac_key, tenant=args.tenant))
    if args.confirm_tail:
        try:
            report.findings.extend(confirm_tails(report, KafkaTailSource(settings.bootstrap_servers),
                                                 RecordCipher(conf.enc_key) if conf.enc_key else None))
        except Exception as exc:  # the broker is unreachable: say so, decide nothing
            print(f"audit verify --confirm-tail: could not read the source topic ({exc})", file=sys.stderr)
            return 2
    print(report.render(heads=not args.quiet))
    return 0 if report.ok else 1


# -- prune --------------------------------------------------------------------------------------------------------

def cmd_prune(args: argparse.Namespace, settings: Settings) -> int:
    settings = settings.with_(bootstrap_servers=args.bootstrap_servers)
    conf = AuditOptions.resolve(args, settings)
    try:
        witness = _witness(conf.anchors, settings)
        heads = _witness_heads(witness)
    except AnchorError as exc:
        print(f"audit prune: {exc}", file=sys.stderr)
        return 2
    anchors = AnchorPublisher(witness) if witness is not None else None
    try:
        with conf.open_log(source=KafkaTailSource(settings.bootstrap_servers), witness_heads=heads,
                           on_checkpoint=anchors.publish if anchors is not None else None) as log:
            pruned = log.prune(int(parse_utc(args.now).timestamp() * 1_000_000) if args.now else None)
    except AuditError as exc:
        print(f"audit: {exc}", file=sys.stderr)
        return 1
    finally:
        if anchors is not None and not anchors.close():
            print(f"audit prune: signed heads not published to {anchors.witness.name}", file=sys.stderr)
    for p in pruned:
        print(f"pruned {p.tenant!r} / {p.stream} / {p.segment}: seq {p.first_seq}..{p.last_seq} ({p.count} records)")
    print(f"{len(pruned)} expired segment(s) pruned; each deletion is recorded in its stream's chain")
    return 0


# -- show ---------------------------------------------------------------------------------------------------------

def _shown(records: Iterator[dict[str, Any]], args: argparse.Namespace,
           cipher: RecordCipher | None) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
    for rec in records:
        if args.audit_class and rec.get("class") != args.audit_class:
            continue
        try:
            event = event_of(rec, cipher)
        except DecryptError:
            event = None
        yield rec, event


def _evidence_opener(args: argparse.Namespace, settings: Settings) -> EvidenceOpener | None:
    """The private keys of ``--evidence-key`` (else ``AGENTWATCH_EVIDENCE_PRIVATE_KEYS``), or None without any."""
    paths = [Path(p) for p in (getattr(args, "evidence_key", None) or ())] or list(settings.evidence.private_keys)
    if not paths:
        return None
    keys = []
    for path in paths:
        try:
            keys.append(load_private_key(path.read_bytes()))
        except (OSError, ValueError) as exc:
            raise SystemExit(f"evidence key {path}: {exc}") from None
    return EvidenceOpener(keys)


def _evidence(event: dict[str, Any], opener: EvidenceOpener | None) -> tuple[dict[str, Any] | None, str | None]:
    """``(raw fields, None)`` when the event's sealed evidence opens, ``(None, why not)`` when it does not, and
    ``(None, None)`` when it has none."""
    text = event.get("evidence")
    if not text:
        return None, None
    if opener is None:
        return None, (f"sealed evidence (key {envelope_kid(text)}): pass --evidence-key FILE or set "
                      "AGENTWATCH_EVIDENCE_PRIVATE_KEYS to open it")
    try:
        return opener.open(text, event), None
    except EvidenceError as exc:
        return None, f"sealed evidence cannot be opened: {exc}"


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    conf = AuditOptions.resolve(args, settings)
    cipher = RecordCipher(conf.enc_key) if conf.enc_key else None
    opener = _evidence_opener(args, settings)
    rows = list(_shown(iter_records(conf.root, args.tenant, args.stream), args, cipher))
    rows.sort(key=lambda r: (r[0].get("recorded_at") or 0, r[0].get("stream") or "", r[0].get("seq") or 0))
    if args.limit:
        rows = rows[-args.limit:]
    if args.json:
        for rec, event in rows:
            out = {k: v for k, v in rec.items() if k != "enc"}
            if event is not None:
                out["event"] = event
                raw, why = _evidence(event, opener)
                if raw is not None:
                    out["evidence_opened"] = raw
                elif why is not None:
                    out["evidence_sealed"] = why
            print(json.dumps(out, ensure_ascii=False))
        return 0
    if not rows:
        print(f"no audit records for tenant {args.tenant!r} under {conf.root}")
        return 0
    print(f"{'recorded (UTC)':<20} {'stream':<10} {'seq':>6}  {'class':<22} {'expires':<20} {'session':<14} "
          f"{'user':<12} detail")
    for rec, event in rows:
        if rec.get("kind") == "segment_pruned":
            p = rec.get("pruned") or {}
            detail = f"pruned {p.get('segment')} (seq {p.get('first_seq')}..{p.get('last_seq')})"
            session = user = ""
        elif event is None:
            detail, session, user = "<encrypted: set AGENTWATCH_AUDIT_ENC_KEY>", "", ""
        else:
            session, user = str(event.get("session_id") or "")[:14], str(event.get("user_id") or "")[:12]
            detail = " ".join(f"{k}={event[k]}" for k in ("type", "tool_name", "confirm_outcome",
                                                          "permission_decision", "status") if event.get(k))
        print(f"{_iso(rec.get('recorded_at')):<20} {rec.get('stream', ''):<10} {rec.get('seq', ''):>6}  "
              f"{rec.get('class', ''):<22} {_iso(rec.get('expires_at')):<20} {session:<14} {user:<12} {detail}")
        if event is not None:
            raw, why = _evidence(event, opener)
            if raw is not None:
                for name, value in raw.items():
                    print(f"    evidence {name}: {value}")
            elif why is not None:
                print(f"    {why}")
    return 0


# -- parser -------------------------------------------------------------------------------------------------------

def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit",
        help="the tamper-evident audit log: run the sink, verify, prune, show",
        description="Append-only, hash-chained, HMAC-checkpointed audit log of the seed's must-keep events "
        "(session start, dangerous tool approved, permission denied, business data modified, memory cleared), "
        "per tenant, with retention classes, encrypted at rest, sealed on a clean stop, its signed heads published "
        "to an external witness (AGENTWATCH_AUDIT_ANCHORS). Keys come from AGENTWATCH_AUDIT_HMAC_KEY and "
        "AGENTWATCH_AUDIT_ENC_KEY; the root from AGENTWATCH_AUDIT_DIR or --dir.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", help="audit root (default: $AGENTWATCH_AUDIT_DIR or $AGENTWATCH_HOME/audit)")
    common.add_argument("--policy", metavar="FILE", help="YAML policy file: retention_classes, audit_classes, "
                        "business_tools (default: $AGENTWATCH_AUDIT_POLICY, else the built-in policy)")
    common.add_argument("--business-tools", metavar="TOOL[,TOOL...]",
                        help="comma-separated business tools, names or fnmatch patterns, replacing the policy's "
                        "list (default: $AGENTWATCH_AUDIT_BUSINESS_TOOLS)")
    asub = p.add_subparsers(dest="audit_command", metavar="ACTION", required=True)

    r = asub.add_parser("run", parents=[common], help="consume the events topic into the audit log",
                        description="Consume the events topic in its own consumer group, keep the audit events, "
                        "fsync, then commit offsets. Stops on Ctrl-C / SIGTERM, or with --until-end.")
    add_bootstrap_servers(r, legacy_alias=True, needs_kafka=True)
    add_topic(r, "events")
    r.add_argument("--group", default="agentwatch-audit", help="consumer group (default: agentwatch-audit)")
    add_metrics_port(r, "audit")
    r.set_defaults(precheck=precheck_run)
    add_run_bounds(r)
    r.add_argument("--fsync", choices=("batch", "always"), default="batch",
                   help="fsync before every offset commit (batch, default) or after every record (always)")
    r.add_argument("--max-tenant-bytes", type=whole_number(1), metavar="BYTES",
                   help="per-tenant size cap; a tenant over it is isolated (its events held in order under "
                   "<dir>/.held, logged) while the others flow (default: $AGENTWATCH_AUDIT_MAX_TENANT_BYTES, "
                   "else none)")
    r.add_argument("--held-retry", type=float, default=60.0, metavar="SECONDS",
                   help="seconds between attempts to give isolated tenants' held events back to the log (default 60)")
    r.add_argument("--insecure-plaintext", action="store_true",
                   help="allow running without AGENTWATCH_AUDIT_ENC_KEY: evidence is then stored UNENCRYPTED")
    r.add_argument("--prune-interval", type=float, default=3600.0, metavar="SECONDS",
                   help="seconds between retention prunes while running (0: never; default 3600)")
    r.set_defaults(func=cmd_run)

    v = asub.add_parser("verify", parents=[common],
                        help="check the hash chains, signed checkpoints and seals (exit 0 OK, 1 tampered, 2 cannot "
                        "check)",
                        description="Say OK, or exactly which record, segment or checkpoint was modified, deleted, "
                        "reordered, truncated, appended after a seal or rolled back, and which check failed. Needs "
                        "AGENTWATCH_AUDIT_HMAC_KEY (or --no-signatures). Records after the last checkpoint are an "
                        "error after a clean stop (sealed), a warning while a writer runs or after a crash. Without "
                        "--anchors, removing the newest checkpoints and the records after the remaining ones is not "
                        "detectable; with it, it is, up to the last head the witness received.")
    add_bootstrap_servers(v)
    v.add_argument("--tenant", help="verify one tenant only")
    v.add_argument("--decrypt", action="store_true",
                   help="also authenticate every ciphertext with AGENTWATCH_AUDIT_ENC_KEY (required then)")
    v.add_argument("--no-signatures", action="store_true",
                   help="run without AGENTWATCH_AUDIT_HMAC_KEY: hash chains only; a rewrite that recomputes them "
                   "is then undetectable")
    v.add_argument("--anchors", nargs="?", const="configured", metavar="WITNESS",
                   help="also check against the signed heads an external witness saw: kafka, kafka:TOPIC, "
                   "file:PATH or http(s)://URL (no value: $AGENTWATCH_AUDIT_ANCHORS, default the "
                   "<prefix>.audit.anchors topic)")
    v.add_argument("--confirm-tail", action="store_true",
                   help="also check every record after the last checkpoint against the Kafka offset it names (what "
                   "the next writer does before signing them; uses AGENTWATCH_AUDIT_ENC_KEY for encrypted logs)")
    v.add_argument("--quiet", action="store_true", help="do not list the signed stream heads")
    v.set_defaults(func=cmd_verify)

    pr = asub.add_parser("prune", parents=[common], help="delete whole segments whose records have all expired",
                         description="Delete closed segments whose every record has expired, recording each "
                         "deletion in the stream's chain and in a signed prune checkpoint first. Fails if "
                         "`audit run` holds the log (it prunes by itself, see --prune-interval).")
    add_bootstrap_servers(pr)
    pr.add_argument("--now", metavar="TIME",
                    help="pretend it is this ISO-8601 time (to preview a future prune on a copy)")
    pr.set_defaults(func=cmd_prune)

    s = asub.add_parser("show", parents=[common], help="list a tenant's audit records",
                        description="List a tenant's audit records, oldest first (decrypted when "
                        "AGENTWATCH_AUDIT_ENC_KEY is set). An event whose fields the producer scrubbed carries their "
                        "raw values sealed to the audit public key (docs/evidence-keys.md): they are shown, "
                        "unscrubbed, when the matching private key is given, else the command says which key "
                        "is needed.")
    s.add_argument("--evidence-key", action="append", metavar="FILE",
                   help="PEM X25519 private key that opens sealed evidence; repeat for retired keys "
                   "(default: $AGENTWATCH_EVIDENCE_PRIVATE_KEYS, comma-separated)")
    s.add_argument("--tenant", required=True, help="the tenant id, as the events carry it")
    s.add_argument("--class", dest="audit_class", choices=AUDIT_CLASSES + ("segment_pruned",),
                   help="only this audit class")
    s.add_argument("--stream", help="only this retention class")
    s.add_argument("--limit", type=int, default=None, metavar="N", help="only the newest N records")
    s.add_argument("--json", action="store_true", help="one JSON object per record (events decrypted when possible)")
    s.set_defaults(func=cmd_show)
