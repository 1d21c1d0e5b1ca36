"""``agentwatch replay run|rebuild|list|show|tail|prune``: the session replay archive (see :mod:`sinks.archive`).

Configuration (read by :class:`agentwatch.config.ReplaySettings`; flags override):

* ``AGENTWATCH_REPLAY_DIR``: the archive root (default ``$AGENTWATCH_HOME/replays``); one directory per tenant,
  one Agentao replay file per session instance in it.
* ``AGENTWATCH_REPLAY_MAX_INSTANCES``: instances kept per tenant (default 1000; ``0`` keeps everything).
* ``AGENTWATCH_REPLAY_CAPTURE_FLAGS``: Agentao's capture flags, e.g.
  ``capture_full_llm_io=true,capture_llm_delta=false`` (a bare name means ``=true``). A rebuild must use the
  same flags as the live archive to be identical to it.
* ``AGENTWATCH_REPLAY_MAX_TENANT_BYTES``: optional per-tenant size cap; a row over it stops the sink uncommitted.

Agentao's own tools read the files too: ``agentao.replay.ReplayReader(path)`` directly, or ``list_replays(root)``
/ ``/replay`` with ``<root>/.agentao/replays`` pointing at a tenant directory (a symlink).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from agentwatch.cli_flags import (
    add_bootstrap_servers,
    add_metrics_port,
    add_run_bounds,
    add_topic,
    check_metrics_port,
    whole_number,
)
from agentwatch.config import Settings, parse_flags
from agentwatch.foreground import StatusLine, stop_on_signals
from agentwatch.isotime import parse_utc
from schemas.redaction import DEFAULT_CAPTURE_FLAGS
from sinks.archive import tenant_dirname, tenant_from_dirname
from sinks.archive_store import DEFAULT_MAX_INSTANCES, ArchiveError, ArchiveWriter, iter_files, read_rows
from sinks.redact import capture_flags
from sinks.replay_view import (
    ReplayEntry,
    find_candidates,
    render_ambiguous,
    render_grouped,
    render_list,
    render_raw,
    summarize,
)


@dataclass(frozen=True)
class ReplayOptions:
    """``settings.replay`` with the flags applied: what the archive commands work with."""

    root: Path
    max_instances: int | None
    flags: dict[str, bool]
    max_tenant_bytes: int | None

    @classmethod
    def resolve(cls, args: argparse.Namespace, settings: Settings) -> ReplayOptions:
        conf = settings.replay
        root = Path(getattr(args, "dir", None) or conf.dir or settings.home / "replays")
        cap = getattr(args, "max_instances", None)
        if cap is None:
            cap = conf.max_instances
        spec = ",".join(getattr(args, "capture", None) or [])
        try:
            flags = capture_flags(parse_flags(spec) if spec else conf.capture_flags)
        except ValueError as exc:
            raise SystemExit(f"capture flags: {exc}") from None
        size = getattr(args, "max_tenant_bytes", None) or conf.max_tenant_bytes
        return cls(root, cap or None, flags, size)

    def open_writer(self, root: Path | None = None, **kwargs: object) -> ArchiveWriter:
        return ArchiveWriter(root or self.root, flags=self.flags, max_instances=self.max_instances,
                             max_tenant_bytes=self.max_tenant_bytes, **kwargs)  # type: ignore[arg-type]


def parse_start(text: str) -> int | None:
    """``earliest`` -> None, else an ISO-8601 time (UTC when it has no offset) -> epoch milliseconds."""
    if text.strip().lower() == "earliest":
        return None
    try:
        return int(parse_utc(text).timestamp() * 1000)
    except ValueError:
        raise SystemExit(f"--from: expected 'earliest' or an ISO-8601 time, not {text!r}") from None


def progress_bar(fraction: float, records: int, total: int, rate: float, width: int = 30) -> str:
    filled = int(round(fraction * width))
    return (f"[{'#' * filled}{'.' * (width - filled)}] {fraction * 100:5.1f}%  {records:,}/{total:,} records  "
            f"{rate:,.0f} events/s")


# -- run ----------------------------------------------------------------------------------------------------------


def precheck_run(args: argparse.Namespace, settings: Settings) -> None:
    """What ``replay run`` needs besides Kafka, checked before waiting for it: a writable archive root, the port."""
    from agentwatch.startup import require_writable_dir

    require_writable_dir(ReplayOptions.resolve(args, settings).root, "replay archive", "--dir / AGENTWATCH_REPLAY_DIR")
    check_metrics_port(args, settings)


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from sinks.archive_sink import ArchiveSink  # confluent-kafka only for the Kafka subcommands

    settings = settings.with_(bootstrap_servers=args.bootstrap_servers)
    conf = ReplayOptions.resolve(args, settings)
    from agentwatch.kafka_log import with_logger
    from agentwatch.selfmon import start_selfmon
    from agentwatch.startup import require_writable_dir

    topic = args.topic or settings.topics.events
    require_writable_dir(conf.root, "replay archive", "--dir / AGENTWATCH_REPLAY_DIR")
    port = args.metrics_port if args.metrics_port is not None else settings.metrics_port
    mon = start_selfmon("replay", args.group, [topic], port, bootstrap_servers=settings.bootstrap_servers,
                        listen_addr=settings.listen_addr)
    try:
        writer = conf.open_writer(fsync=not args.no_fsync)
    except ArchiveError as exc:
        mon.close()
        print(f"replay: {exc}", file=sys.stderr)
        return 1
    print(f"archiving {topic} at {settings.bootstrap_servers} (group {args.group}) into {conf.root}"
          + (f"; metrics on http://{settings.listen_addr}:{mon.port}/metrics" if mon.port is not None else ""),
          file=sys.stderr)
    sink = ArchiveSink(settings.bootstrap_servers, topic, writer, group_id=args.group,
                       consumer_config=with_logger())
    status = StatusLine()

    def progress(stats: object) -> None:
        status.show(f"{sink.stats.line()}; {writer.stats.rows:,} rows")

    failed = False
    with stop_on_signals() as stop:  # Ctrl-C / SIGTERM: finish the batch, flush, commit, then exit
        try:
            sink.run(stop=stop, until_end=args.until_end, idle_timeout_s=args.idle_timeout, on_progress=progress)
            writer.prune()  # retention once more over everything, as a rebuild ends with
        except ArchiveError as exc:
            failed = True
            print(f"\nreplay: {exc}\nstopped without committing the current batch; it is re-delivered after a "
                  "restart", file=sys.stderr)
        finally:
            writer.close(flush=not failed)
            mon.close()
    print(f"\r  {sink.stats.line()}\n  {writer.stats.line()}", file=sys.stderr)
    _print_repairs(writer)
    return 1 if failed else 0


def _print_repairs(writer: ArchiveWriter) -> None:
    for r in writer.repairs:
        print(f"  repaired a torn last line (crash mid-write): {r.path} cut to {r.kept_bytes:,} bytes "
              f"({r.removed_bytes:,} removed)", file=sys.stderr)
    if writer.pruned:
        print(f"  pruned {len(writer.pruned)} old instance(s) (max_instances={writer.max_instances})",
              file=sys.stderr)


# -- rebuild ------------------------------------------------------------------------------------------------------


def precheck_rebuild(args: argparse.Namespace, settings: Settings) -> None:
    """Before waiting for Kafka: the output directory must be fresh."""
    from agentwatch.startup import StartupError

    out = Path(args.out)
    if out.exists() and any(p.name != ".lock" for p in out.iterdir()):
        raise StartupError(f"{out} is not empty; give a fresh directory")


def cmd_rebuild(args: argparse.Namespace, settings: Settings) -> int:
    from sinks.archive_sink import Progress, rebuild_archive

    settings = settings.with_(bootstrap_servers=args.bootstrap_servers)
    conf = ReplayOptions.resolve(args, settings)
    topic = args.topic or settings.topics.events
    start_ms = parse_start(args.from_)
    out = Path(args.out)
    if out.exists() and any(p.name != ".lock" for p in out.iterdir()):
        print(f"replay rebuild: {out} is not empty; give a fresh directory", file=sys.stderr)
        return 2
    where = "the earliest offsets" if start_ms is None else \
        datetime.fromtimestamp(start_ms / 1000, UTC).isoformat(timespec="milliseconds")
    workers = args.workers or os.cpu_count() or 1
    print(f"rebuilding {out} from {topic} at {settings.bootstrap_servers}, from {where} "
          f"(up to {workers} worker(s))", file=sys.stderr)

    def progress(p: Progress) -> None:
        print(f"\r  {progress_bar(p.fraction, p.records, p.total, p.rate)}", end="", file=sys.stderr, flush=True)

    try:
        r = rebuild_archive(settings.bootstrap_servers, topic, out, start_ms=start_ms, workers=workers,
                            flags=conf.flags, max_instances=conf.max_instances,
                            max_tenant_bytes=conf.max_tenant_bytes, on_progress=progress)
    except ArchiveError as exc:
        print(f"\nreplay rebuild: {exc}", file=sys.stderr)
        return 1
    files = sum(1 for _ in out.rglob("*.jsonl"))
    tenants = sum(1 for p in out.iterdir() if p.is_dir())
    rate = r.events / r.elapsed if r.elapsed else 0.0
    print(f"\nrebuilt {out} in {r.elapsed:.1f}s with {r.workers} worker(s): {r.records:,} records, {r.events:,} "
          f"events ({rate:,.0f} events/s) -> {r.rows:,} rows, {r.bytes:,} bytes, {files:,} file(s) for "
          f"{tenants:,} tenant(s)", file=sys.stderr)
    print(f"  {r.instances:,} instance(s); {r.duplicates:,} duplicate events, {r.after_close:,} after close",
          file=sys.stderr)
    if r.skipped:
        print("  without a replay kind: " + ", ".join(f"{k}={v}" for k, v in sorted(r.skipped.items())),
              file=sys.stderr)
    if r.undecodable:
        print("  undecodable: " + ", ".join(f"{k}={v}" for k, v in sorted(r.undecodable.items())), file=sys.stderr)
    if r.pruned:
        print(f"  pruned {len(r.pruned)} old instance(s) (max_instances={conf.max_instances})", file=sys.stderr)
    return 0


# -- list / show / tail / prune -----------------------------------------------------------------------------------


def load_entries(root: Path, tenant: str | None = None) -> list[tuple[ReplayEntry, list[dict]]]:
    """Every file under ``root`` (oldest first) with its rows."""
    out = []
    for f in iter_files(root, tenant_dirname(tenant) if tenant is not None else None):
        try:
            rows, bad = read_rows(f.path)
        except OSError:
            continue
        updated = datetime.fromtimestamp(f.mtime_us / 1e6, UTC).isoformat(timespec="seconds")
        entry = summarize(rows, tenant=tenant_from_dirname(f.tenant_dir) or f.tenant_dir, path=f.path,
                          session_id=f.session_id, instance_id=f.instance_id, updated_at=updated,
                          malformed_lines=bad)
        out.append((entry, rows))
    return out


def _tz(args: argparse.Namespace) -> object:
    return UTC if getattr(args, "utc", False) else None


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    conf = ReplayOptions.resolve(args, settings)
    entries = [e for e, _ in load_entries(conf.root, args.tenant)]
    print(render_list(entries, root=conf.root, max_instances=conf.max_instances, tz=_tz(args)), end="")
    return 0


def _resolve(args: argparse.Namespace, settings: Settings) -> tuple[ReplayEntry, list[dict]] | int:
    conf = ReplayOptions.resolve(args, settings)
    loaded = load_entries(conf.root, args.tenant)
    candidates = find_candidates([e for e, _ in loaded], args.id)
    if not candidates:
        print(f"No replay matches id '{args.id}'. Use `agentwatch replay list` to see available instances.",
              file=sys.stderr)
        return 1
    if len(candidates) > 1:
        print(render_ambiguous(args.id, candidates, _tz(args)), end="", file=sys.stderr)
        return 2
    rows = next(r for e, r in loaded if e is candidates[0])
    return candidates[0], rows


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    found = _resolve(args, settings)
    if isinstance(found, int):
        return found
    entry, rows = found
    tz = _tz(args)
    if args.kind is not None:
        print(render_raw([r for r in rows if str(r.get("kind", "")).startswith(args.kind)], entry, tz), end="")
    elif args.raw:
        print(render_raw(rows, entry, tz), end="")
    else:
        print(render_grouped(rows, entry, turn_filter=args.turn, errors_only=args.errors, tz=tz), end="")
    if entry.malformed_lines:
        print(f"\nNote: {entry.malformed_lines} malformed line(s) skipped.")
    return 0


def cmd_tail(args: argparse.Namespace, settings: Settings) -> int:
    found = _resolve(args, settings)
    if isinstance(found, int):
        return found
    entry, rows = found
    print(render_raw(rows[-max(1, args.n):], entry, _tz(args)), end="")
    return 0


def cmd_prune(args: argparse.Namespace, settings: Settings) -> int:
    conf = ReplayOptions.resolve(args, settings)
    if conf.max_instances is None:
        print("No retention configured (max_instances=0): nothing to prune.")
        return 0
    try:
        with conf.open_writer() as writer:
            deleted = writer.prune()
    except ArchiveError as exc:
        print(f"replay prune: {exc}", file=sys.stderr)
        return 1
    if not deleted:
        print("Nothing to prune.")
        return 0
    print(f"Pruned {len(deleted)} old replay(s).")
    for path in deleted:
        print(f"  - {path.parent.name}/{path.name}")
    return 0


# -- parser -------------------------------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "replay",
        help="the session replay archive (Agentao replay format): run the sink, rebuild, list, show, tail, prune",
        description="One Agentao replay JSONL file (schema 1.6) per session instance, per tenant, rebuilt from the "
        "events topic: Agentao's ReplayReader and /replay views read it. Secrets are redacted and long fields "
        "capped per Agentao's capture flags before anything is written. Root: --dir, $AGENTWATCH_REPLAY_DIR or "
        "$AGENTWATCH_HOME/replays.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", help="archive root (default: $AGENTWATCH_REPLAY_DIR or $AGENTWATCH_HOME/replays)")
    common.add_argument("--max-instances", type=whole_number(0), metavar="N",
                        help=f"instances kept per tenant, newest by last event (default: "
                        f"$AGENTWATCH_REPLAY_MAX_INSTANCES or {DEFAULT_MAX_INSTANCES}; 0 keeps all)")
    writing = argparse.ArgumentParser(add_help=False)
    add_bootstrap_servers(writing, legacy_alias=True, needs_kafka=True)
    add_topic(writing, "events")
    writing.add_argument("--capture", action="append", metavar="FLAG[=BOOL]",
                         help="Agentao capture flag, repeatable: " + ", ".join(DEFAULT_CAPTURE_FLAGS)
                         + " (default: $AGENTWATCH_REPLAY_CAPTURE_FLAGS, else Agentao's defaults)")
    writing.add_argument("--max-tenant-bytes", type=whole_number(1), metavar="BYTES",
                         help="per-tenant size cap; a row over it stops the sink uncommitted "
                         "(default: $AGENTWATCH_REPLAY_MAX_TENANT_BYTES, else none)")
    reading = argparse.ArgumentParser(add_help=False)
    reading.add_argument("--tenant", help="only this tenant's replays")
    reading.add_argument("--utc", action="store_true", help="show times in UTC instead of local time")
    rsub = p.add_subparsers(dest="replay_command", metavar="ACTION", required=True)

    r = rsub.add_parser("run", parents=[common, writing], help="consume the events topic into the archive",
                        description="Consume the events topic in its own consumer group, write replay rows, "
                        "fsync, then commit offsets (never past unwritten data). Stops on Ctrl-C / SIGTERM, or "
                        "with --until-end / --idle-timeout.")
    r.add_argument("--group", default="agentwatch-replay", help="consumer group (default: agentwatch-replay)")
    add_metrics_port(r, "replay")
    r.set_defaults(precheck=precheck_run)
    add_run_bounds(r)
    r.add_argument("--no-fsync", action="store_true", help="do not fsync before committing (faster, less durable)")
    r.set_defaults(func=cmd_run)

    b = rsub.add_parser("rebuild", parents=[common, writing], help="re-consume the topic into a fresh archive",
                        description="Re-read the events topic (its own unique group, nothing committed, no alerts) "
                        "from the earliest offsets or from a time, up to the end offsets seen at start, into a "
                        "fresh directory. A progress bar goes to stderr, a summary at the end. With the same "
                        "capture flags the result is byte-identical to the live archive for the same events.")
    b.add_argument("--from", dest="from_", default="earliest", metavar="earliest|TIME",
                   help="'earliest' (default) or an ISO-8601 time (UTC if no offset): seek with offsets_for_times")
    b.add_argument("--out", required=True, metavar="DIR", help="the new archive's directory (must be empty or absent)")
    b.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes sharing the partitions (default: the number of CPUs; 1 = this process)")
    b.set_defaults(func=cmd_rebuild, precheck=precheck_rebuild)

    ls = rsub.add_parser("list", parents=[common, reading], help="list archived replays, newest first",
                         description="Like Agentao's /replay list: short id, first user message, events and "
                         "turns, created / updated, file.")
    ls.set_defaults(func=cmd_list)

    show = rsub.add_parser("show", parents=[common, reading], help="show one replay (grouped per turn, or raw)",
                           description="Like Agentao's /replay show. ID: a prefix of the full id "
                           "<session>.<instance>, the short id <session[:8]>.<instance[:6]>, the instance id or the "
                           "session id; an exact match wins.")
    show.add_argument("id", help="replay id or prefix")
    show.add_argument("--raw", action="store_true", help="flat view: one line per row")
    show.add_argument("--turn", help="only the turns whose id starts with this")
    show.add_argument("--kind", help="only rows whose kind starts with this (raw view)")
    show.add_argument("--errors", action="store_true", help="only turns with an error or an error/cancelled status")
    show.set_defaults(func=cmd_show)

    tail = rsub.add_parser("tail", parents=[common, reading], help="the last N rows of a replay (raw view)",
                           description="Like Agentao's /replay tail: the last N rows of one replay, one line per "
                           "row. ID as for `replay show`.")
    tail.add_argument("id", help="replay id or prefix")
    tail.add_argument("n", nargs="?", type=int, default=20, help="how many rows (default 20)")
    tail.set_defaults(func=cmd_tail)

    pr = rsub.add_parser("prune", parents=[common], help="delete instances beyond max_instances per tenant",
                         description="Keep each tenant's newest max_instances instances (by last event); open ones "
                         "are never deleted. Fails while `replay run` holds the archive (it prunes by itself).")
    pr.set_defaults(func=cmd_prune)
