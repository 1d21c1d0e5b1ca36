"""``agentwatch audit run|verify|prune|show``: the tamper-evident audit log (see :mod:`sinks.audit_log`).

Configuration (read by :class:`agentwatch.config.AuditSettings`; flags override):

* ``AGENTWATCH_AUDIT_DIR``: the audit root (default ``$AGENTWATCH_HOME/audit``).
* ``AGENTWATCH_AUDIT_HMAC_KEY``: the checkpoint signing key (its UTF-8 bytes, at least 16; e.g. the output of
  ``openssl rand -base64 32``). Required to write; ``verify`` without it checks the hash chain only.
* ``AGENTWATCH_AUDIT_ENC_KEY``: optional, base64 of 32 bytes: encrypt records at rest (AES-256-GCM).
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

from agentwatch.cli_flags import add_bootstrap_servers, add_topic, whole_number
from agentwatch.config import Settings, parse_list
from agentwatch.foreground import StatusLine, stop_on_signals
from agentwatch.isotime import parse_utc, utc_iso
from schemas.evidence import EvidenceError, EvidenceOpener, envelope_kid, load_private_key
from sinks.audit_classify import AUDIT_CLASSES, AuditPolicy, PolicyError
from sinks.audit_format import DecryptError, RecordCipher, event_of
from sinks.audit_log import AuditError, AuditLog
from sinks.audit_store import iter_records
from sinks.audit_verify import verify_root


@dataclass(frozen=True)
class AuditOptions:
    """``settings.audit`` with the flags applied and the policy file loaded."""

    root: Path
    hmac_key: bytes | None = field(repr=False)
    enc_key: bytes | None = field(repr=False)
    policy: AuditPolicy
    max_tenant_bytes: int | None

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
        return cls(root, conf.hmac_key, conf.enc_key, policy, cap)

    def require_key(self) -> bytes:
        if self.hmac_key is None:
            raise SystemExit("set AGENTWATCH_AUDIT_HMAC_KEY (the checkpoint signing key) to write the audit log")
        return self.hmac_key

    def open_log(self, **kwargs: Any) -> AuditLog:
        return AuditLog(self.root, self.require_key(), enc_key=self.enc_key, max_tenant_bytes=self.max_tenant_bytes,
                        **kwargs)


def _iso(us: int | None) -> str:
    return "never" if us is None else utc_iso(us)


# -- run ----------------------------------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from sinks.audit_sink import AuditSink  # confluent-kafka only for this subcommand

    settings = settings.with_(bootstrap_servers=args.bootstrap_servers)
    conf = AuditOptions.resolve(args, settings)
    topic = args.topic or settings.topics.events
    try:
        log = conf.open_log(fsync=args.fsync)
    except AuditError as exc:
        print(f"audit: {exc}", file=sys.stderr)
        return 1
    print(f"auditing {topic} at {settings.bootstrap_servers} (group {args.group}) into {conf.root}"
          f"{' (encrypted)' if log.encrypted else ''}", file=sys.stderr)
    sink = AuditSink(settings.bootstrap_servers, topic, log, conf.policy, group_id=args.group)
    next_prune = time.monotonic() + args.prune_interval if args.prune_interval else None

    status = StatusLine()

    def progress(stats: Any) -> None:
        nonlocal next_prune
        status.show(stats.line())
        if next_prune is not None and time.monotonic() >= next_prune:
            next_prune = time.monotonic() + args.prune_interval
            for p in log.prune():
                print(f"\n  pruned {p.tenant!r}/{p.stream}/{p.segment} ({p.count} records)", file=sys.stderr)

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
            log.close()
            for r in log.repairs:
                print(f"\n  repaired a torn tail (crash mid-write): {r.path} cut to {r.kept_bytes} bytes "
                      f"({r.removed_bytes} removed)", file=sys.stderr)
    print(f"\r  {stats.line()}", file=sys.stderr)
    if stats.undecodable:
        print("  undecodable: " + ", ".join(f"{k}={v}" for k, v in sorted(stats.undecodable.items())),
              file=sys.stderr)
    if stats.per_class:
        print("  audited: " + ", ".join(f"{k}={v}" for k, v in sorted(stats.per_class.items())), file=sys.stderr)
    return 0


# -- verify -------------------------------------------------------------------------------------------------------

def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    conf = AuditOptions.resolve(args, settings)
    report = verify_root(conf.root, conf.hmac_key, tenant=args.tenant,
                         enc_key=conf.enc_key if args.decrypt else None)
    print(report.render(heads=not args.quiet))
    return 0 if report.ok else 1


# -- prune --------------------------------------------------------------------------------------------------------

def cmd_prune(args: argparse.Namespace, settings: Settings) -> int:
    conf = AuditOptions.resolve(args, settings)
    try:
        with conf.open_log() as log:
            pruned = log.prune(int(parse_utc(args.now).timestamp() * 1_000_000) if args.now else None)
    except AuditError as exc:
        print(f"audit: {exc}", file=sys.stderr)
        return 1
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
        "per tenant, with retention classes. Keys come from AGENTWATCH_AUDIT_HMAC_KEY and (optional) "
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
    add_bootstrap_servers(r, legacy_alias=True)
    add_topic(r, "events")
    r.add_argument("--group", default="agentwatch-audit", help="consumer group (default: agentwatch-audit)")
    r.add_argument("--until-end", action="store_true", help="stop once the end offsets seen at start are reached")
    r.add_argument("--idle-timeout", type=float, default=None, metavar="SECONDS",
                   help="stop after this many seconds without data")
    r.add_argument("--fsync", choices=("batch", "always"), default="batch",
                   help="fsync before every offset commit (batch, default) or after every record (always)")
    r.add_argument("--max-tenant-bytes", type=whole_number(1), metavar="BYTES",
                   help="per-tenant size cap; an append over it stops the sink uncommitted "
                   "(default: $AGENTWATCH_AUDIT_MAX_TENANT_BYTES, else none)")
    r.add_argument("--prune-interval", type=float, default=3600.0, metavar="SECONDS",
                   help="seconds between retention prunes while running (0: never; default 3600)")
    r.set_defaults(func=cmd_run)

    v = asub.add_parser("verify", parents=[common],
                        help="check the hash chains and signed checkpoints (exit 0 OK, 1 tampered)",
                        description="Say OK, or exactly which record or segment was modified, deleted, reordered "
                        "or truncated, and which check failed. Without AGENTWATCH_AUDIT_HMAC_KEY the "
                        "checkpoint signatures are not checked (a warning).")
    v.add_argument("--tenant", help="verify one tenant only")
    v.add_argument("--decrypt", action="store_true",
                   help="also authenticate every ciphertext with AGENTWATCH_AUDIT_ENC_KEY")
    v.add_argument("--quiet", action="store_true", help="do not list the signed stream heads")
    v.set_defaults(func=cmd_verify)

    pr = asub.add_parser("prune", parents=[common], help="delete whole segments whose records have all expired",
                         description="Delete closed segments whose every record has expired, recording each "
                         "deletion in the stream's chain and in a signed prune checkpoint first. Fails if "
                         "`audit run` holds the log (it prunes by itself, see --prune-interval).")
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
