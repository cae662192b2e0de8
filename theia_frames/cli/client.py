"""Client commands: ``send``, ``find``, ``live`` and ``simulate``.

Examples::

    theia-frames send --source /dev/door --tag home --tag door "unlocked"
    tail -f app.log | theia-frames send --stdin --source app.log --tag app
    theia-frames find --start -15m --tag sensor --content '\\d+C'
    theia-frames find --start 2024-05-01 --format csv > events.csv
    theia-frames find --start -1d --out events.parquet
    theia-frames live --tag sensor
    theia-frames simulate --rate 100 --duration 1m --sources 6

Times (``--start``/``--end``) are seconds since the epoch, ISO-8601 (UTC
unless an offset is given) or relative to now like ``-15m``; see
:mod:`theia_frames.timeparse`.

Commands that send confirm with the collector that the events were stored
(see :mod:`theia_frames.cli.remote` for what they print and their exit codes).
``--format csv|jsonl|parquet`` writes what ``--out`` writes (one writer,
:class:`theia_frames.frames.export.EventWriter`). A query that ends early (a dropped
connection) says so on stderr after the rows it printed and exits 1.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import io
import re
import select
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, TextIO

from ..event import Event
from ..exceptions import TheiaError, UsageError
from ..filter import EventFilter
from . import argtypes
from .argtypes import duration_arg, time_arg
from .logs import add_log_options, log_options, send_log, uses_log_format
from .remote import Confirmation, add_connection_options, client_from

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

__all__ = ["register"]

_LIVE_FORMATS = ("table", "csv", "jsonl")
_FIND_FORMATS = (*_LIVE_FORMATS, "parquet")

# --------------------------------------------------------------------------- options


# argparse takes "-15m" for an unknown option; values that look like a signed
# relative time (or number) are read as values instead, so "--start -15m" works.
_SIGNED_VALUE = re.compile(r"^-(\d+(\.\d*)?|\.\d+)([a-z]+(\d+(\.\d*)?[a-z]+)*)?$")


def _add_filter_options(p: argparse.ArgumentParser, *, order: bool = True) -> None:
    p._negative_number_matcher = _SIGNED_VALUE
    g = p.add_argument_group("filter")
    g.add_argument("--start", type=time_arg, metavar="TIME", help="events at or after TIME (epoch, ISO-8601, -15m)")
    g.add_argument("--end", type=time_arg, metavar="TIME", help="events at or before TIME")
    g.add_argument(
        "--tag", action="append", default=[], metavar="REGEX", help="a tag pattern every event must have (repeatable)"
    )
    g.add_argument("--content", metavar="REGEX", help="a pattern found in the content")
    g.add_argument("--source", metavar="REGEX", help="a pattern the source must fully match (Filter.match_source)")
    if order:
        g.add_argument("--order", choices=("asc", "desc"), help="order by timestamp")


def _filter_from(args: argparse.Namespace) -> EventFilter:
    return EventFilter(
        start=args.start,
        end=args.end,
        tags=tuple(args.tag),
        content=args.content,
        source=args.source,
        order=getattr(args, "order", None),
    )


#: The filter options of ``find`` and the filter they describe, for the other commands that take a filter.
add_filter_options = _add_filter_options
filter_from = _filter_from


def _split_tags(values: Iterable[str]) -> list[str]:
    return [t for v in values for t in v.split(",") if t]


_CONFIRMS = (
    "Exit status: 0 when our collector confirmed that every event was stored, or when the "
    "peer cannot confirm (the upstream collector, --no-batch: said on stderr); 1 when events "
    "were refused or not stored (with the collector's reason) or the connection failed."
)


def register(subparsers: Any) -> None:
    """Add the ``send``, ``find``, ``live`` and ``simulate`` commands."""
    p = subparsers.add_parser(
        "send",
        help="send an event (or one per line of stdin)",
        description="Send one event built from the arguments, or one event per line of standard input, "
        "and confirm with the collector that it was stored. " + _CONFIRMS,
    )
    add_connection_options(p)
    p.add_argument("text", nargs="?", help="the event content")
    p.add_argument("--content", help="the event content (instead of the positional argument)")
    p.add_argument("--source", default="", help="the event source, e.g. /dev/sensors/temp-1")
    p.add_argument("--tag", action="append", default=[], help="a tag (repeatable, or comma-separated)")
    p.add_argument("--timestamp", type=time_arg, metavar="TIME", help="event time (default: now; not with --stdin)")
    p.add_argument("--id", help="event id (default: a new UUID4)")
    p.add_argument(
        "--stdin",
        action="store_true",
        help="send one event per non-empty line of stdin (the line is its content, sent now), "
        "or with --format/--regex/--template one per record, at the time written in its line",
    )
    add_log_options(p, required=False)
    p.set_defaults(func=cmd_send)

    p = subparsers.add_parser(
        "find",
        help="print past events",
        description="Print past events matching a filter: a table, CSV, JSON lines or Parquet, or write "
        "them to a file. A query that ends early says so on stderr and exits 1.",
    )
    add_connection_options(p)
    _add_filter_options(p)
    p.add_argument(
        "--format",
        choices=_FIND_FORMATS,
        default=None,
        help="output format (default: table on stdout; with --out, from its extension)",
    )
    p.add_argument("--out", metavar="PATH", help="write to PATH instead (.parquet, .csv, .jsonl)")
    p.add_argument("--limit", type=argtypes.count, metavar="N", help="stop after N events (at least 1)")
    p.add_argument(
        "--idle-timeout",
        type=float,
        metavar="SECONDS",
        default=None,
        help="for collectors that never close a find (upstream): silence that ends it",
    )
    p.add_argument("--strict", action="store_true", help="fail on an undecodable message instead of skipping it")
    p.set_defaults(func=cmd_find)

    p = subparsers.add_parser(
        "live",
        help="print events as they are collected",
        description="Print new events matching a filter as they arrive; Ctrl-C stops and prints a count.",
    )
    add_connection_options(p)
    _add_filter_options(p, order=False)
    p.add_argument("--format", choices=_LIVE_FORMATS, default="table", help="output format (default: table)")
    p.add_argument("--limit", type=argtypes.count, metavar="N", help="stop after N events (at least 1)")
    p.set_defaults(func=cmd_live)

    p = subparsers.add_parser(
        "simulate",
        help="send sensor-like events at a given rate",
        description="Send sensor-like readings (numbers with units from several sources) in real time, "
        "showing progress on stderr, and confirm with the collector that they were stored. " + _CONFIRMS,
    )
    add_connection_options(p)
    p.add_argument("--rate", type=argtypes.positive_number, default=10.0, help="events per second (default 10)")
    p.add_argument("--duration", type=duration_arg, metavar="DURATION", help="how long, e.g. 30s, 5m")
    p.add_argument("--n", type=argtypes.count, metavar="N", help="how many events")
    p.add_argument("--sources", type=argtypes.count, default=4, help="number of simulated sensors (default 4)")
    p.add_argument("--seed", type=int, help="random seed, for reproducible events")
    p.add_argument("--fast", action="store_true", help="send as fast as possible instead of in real time")
    p.set_defaults(func=cmd_simulate)


# --------------------------------------------------------------------------- output


def _iso(ts: float) -> str:
    try:
        moment = _dt.datetime.fromtimestamp(ts, _dt.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return repr(ts)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _one_line(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")


class _Table:
    """Writes events to a terminal (or any text stream) as a table, one line each, as they come."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.count = 0
        self._width = shutil.get_terminal_size((120, 24)).columns if out.isatty() else None
        self._header = False

    def write(self, event: Event) -> None:
        # counted first: Ctrl-C may interrupt right after the line is out
        self.count += 1
        if not self._header:
            self._header = True
            self.out.write(f"{'TIME (UTC)':<27}  {'SOURCE':<24}  {'TAGS':<20}  CONTENT\n")
        line = (
            f"{_iso(event.timestamp):<27}  {_one_line(event.source):<24}  "
            f"{','.join(event.tags):<20}  {_one_line(event.content)}"
        )
        if self._width and len(line) > self._width:
            line = line[: max(self._width - 1, 0)] + "…"
        self.out.write(line + "\n")

    def flush(self) -> None:
        self.out.flush()


def _report_skipped(stream: Any) -> None:
    if stream.skipped:
        first = stream.errors[0] if stream.errors else None
        more = f"; first: {first}" if first else ""
        print(f"theia-frames: warning: skipped {stream.skipped} undecodable message(s){more}", file=sys.stderr)


def _limited(events: Iterable[Event], limit: int | None) -> Iterator[Event]:
    if limit is None:
        yield from events
        return
    for i, event in enumerate(events, 1):
        yield event
        if i >= limit:
            return


def _limited_batches(batches: Iterable[pa.RecordBatch], limit: int | None) -> Iterator[pa.RecordBatch]:
    left = limit
    for batch in batches:
        if left is not None and batch.num_rows >= left:
            yield batch.slice(0, left)
            return
        if left is not None:
            left -= batch.num_rows
        yield batch


def _ended_early(exc: TheiaError, printed: str) -> int:
    """A query that failed after it started: say so after what was printed; exit code 1."""
    sys.stdout.flush()
    print(f"theia-frames: error: the query ended early, {printed}: {exc}", file=sys.stderr)
    return 1


# --------------------------------------------------------------------------- commands


def _stdin_chunks(stream: Any) -> Iterator[list[bytes]]:
    """Lines of a binary stream in chunks of whatever has arrived, so that
    ``tail -f log | theia-frames send --stdin`` sends each line promptly."""
    read1 = getattr(stream, "read1", None) or stream.read
    rest = b""
    while True:
        data = read1(1 << 16)
        if not data:
            break
        lines = (rest + data).split(b"\n")
        rest = lines.pop()
        if lines:
            yield lines
    if rest:
        yield [rest]


def _nothing_waiting(stream: Any) -> bool:
    """Whether no more input is ready at once (True where that cannot be told).

    After ``read1`` of more than its buffer, a buffered reader holds nothing
    more, so the file descriptor says it all."""
    try:
        ready, _, _ = select.select([stream], [], [], 0)
    except (OSError, ValueError, TypeError, io.UnsupportedOperation):
        return True
    return not ready


def cmd_send(args: argparse.Namespace) -> int:
    tags = _split_tags(args.tag)
    content = args.content if args.content is not None else args.text
    if args.stdin and content is not None:
        raise UsageError("send: give either a content or --stdin, not both")
    if args.stdin and args.timestamp is not None:
        raise UsageError(
            "send: --timestamp is for one event; with --stdin each line is sent now, or at the time "
            "written in it with --format/--regex/--template (see theia-frames import-log)"
        )
    if uses_log_format(args) and not args.stdin:
        raise UsageError("send: --format, --regex and --template read the lines of --stdin")
    with client_from(args) as client:
        confirmation = Confirmation(client)
        if args.stdin and uses_log_format(args):
            try:
                options = log_options(args)
                if args.source and not args.source_from:
                    options["source"] = ""  # --source names every event's source: no field of the format does
                report = send_log(
                    client, confirmation, sys.stdin.buffer, options, origin=args.source, add_tags=tags, confirm_each=True
                )
            except TheiaError as exc:
                if isinstance(exc, UsageError):
                    raise
                return confirmation.failed(exc)
            except KeyboardInterrupt:
                return confirmation.finish() or 130
            if not report.ok:
                print(report.summary(), file=sys.stderr)
            return confirmation.finish() or (0 if report.ok else 1)
        if args.stdin:
            stdin = sys.stdin.buffer
            try:
                for chunk in _stdin_chunks(stdin):
                    events = []
                    for raw in chunk:
                        text = raw.decode("utf-8", "replace").rstrip("\r\n")
                        if text:
                            events.append(Event(source=args.source, tags=list(tags), content=text))
                    if events:
                        confirmation.sent(client.send_many(events))
                        if client.batched and _nothing_waiting(stdin):
                            # a line that came alone (tail -f) is confirmed now, not with the next one
                            confirmation.confirm()
            except TheiaError as exc:
                return confirmation.failed(exc)
            except KeyboardInterrupt:
                # Ctrl-C ends `tail -f log | theia-frames send --stdin`: still say what was stored
                return confirmation.finish() or 130
            return confirmation.finish()
        kw: dict[str, Any] = {"source": args.source, "tags": tags, "content": content or ""}
        if args.timestamp is not None:
            kw["timestamp"] = args.timestamp
        if args.id:
            kw["id"] = args.id
        event = Event(**kw)
        try:
            client.send(event)
        except TheiaError as exc:
            return confirmation.failed(exc)
        confirmation.sent(1)
        code = confirmation.finish(quiet=True)
        if code == 0:
            print(event.id)
        return code


def _find_output(args: argparse.Namespace) -> str:
    """The format ``find`` writes, checked before the query starts."""
    from ..frames.export import format_for

    if args.out:
        if args.format == "table":
            raise UsageError("--format table is for the terminal; with --out choose csv, jsonl or parquet")
        return format_for(args.out, args.format, option="--format")
    fmt = args.format or "table"
    if fmt == "parquet" and sys.stdout.isatty():
        raise UsageError("--format parquet is binary: give --out PATH, or redirect stdout to a file")
    return fmt


def cmd_find(args: argparse.Namespace) -> int:
    fmt = _find_output(args)
    kw: dict[str, Any] = {"strict": args.strict}
    if args.idle_timeout is not None:
        kw["idle_timeout"] = args.idle_timeout
    with client_from(args, **kw) as client:
        # batch_size=1: the events of a plain peer are decoded as they arrive (each read at
        # once), so they are written promptly and counted if the query ends early
        result = client.find(_filter_from(args), batch_size=1)
        with result:
            if args.out:
                from ..frames.export import write_events

                try:
                    n = write_events(_limited_batches(result.iter_batches(), args.limit), args.out, format=fmt)
                except TheiaError as exc:
                    return _ended_early(exc, f"after {result.count} event(s); nothing was written to {args.out}")
                print(f"wrote {n} event(s) to {args.out}", file=sys.stderr)
            elif fmt == "table":
                table = _Table(sys.stdout)
                try:
                    for event in _limited(result, args.limit):
                        table.write(event)
                except TheiaError as exc:
                    return _ended_early(exc, f"{table.count} event(s) printed above are only part of the result")
                table.flush()
                print(f"{table.count} event(s)", file=sys.stderr)
            else:
                from ..frames.export import EventWriter

                sys.stdout.flush()
                writer = EventWriter(sys.stdout.buffer, fmt)
                try:
                    for batch in _limited_batches(result.iter_batches(), args.limit):
                        writer.write(batch)
                except TheiaError as exc:
                    return _ended_early(exc, f"{writer.count} event(s) written above are only part of the result")
                finally:
                    writer.close()
            _report_skipped(result)
    return 0


def _describe(flt: EventFilter) -> str:
    parts = []
    if flt.tags:
        parts.append("tags " + " ".join(flt.tags))
    if flt.content:
        parts.append(f"content /{flt.content}/")
    if flt.start is not None:
        parts.append(f"from {_iso(flt.start)}")
    if flt.end is not None:
        parts.append(f"until {_iso(flt.end)}")
    return ", ".join(parts) or "every event"


def cmd_live(args: argparse.Namespace) -> int:
    flt = _filter_from(args)
    with client_from(args) as client:
        stream = client.receive(flt)
        print(f"listening on {client.url} for {_describe(flt)}; Ctrl-C to stop", file=sys.stderr, flush=True)
        out: Any = _Table(sys.stdout)
        failure: TheiaError | None = None
        try:
            with stream:
                if args.format == "table":
                    for event in _limited(stream, args.limit):
                        out.write(event)
                        out.flush()
                else:
                    from ..frames.export import EventWriter

                    out = EventWriter(sys.stdout.buffer, args.format)
                    for batch in _limited_batches(stream.iter_batches(), args.limit):
                        out.write(batch)
        except KeyboardInterrupt:
            pass
        except TheiaError as exc:
            failure = exc
        finally:
            if not isinstance(out, _Table):
                out.close()
        _report_skipped(stream)
        if failure is not None:
            sys.stdout.flush()
            print(f"theia-frames: error: the live stream ended after {out.count} event(s): {failure}", file=sys.stderr)
            return 1
        print(f"\nreceived {out.count} event(s)", file=sys.stderr)
    return 0


class _Progress:
    """Progress of a simulation on stderr: a line at each tenth of a known total, and at
    least every :data:`_PROGRESS_EVERY` seconds; each confirms what was sent with the collector."""

    def __init__(self, confirmation: Confirmation, total: int | None) -> None:
        self.confirmation = confirmation
        self.total = total
        self.t0 = time.monotonic()
        self._last_time = self.t0
        self._last_tenth = 0

    def __call__(self, sent: int) -> None:
        c = self.confirmation
        c.sent(sent - c.count)
        now = time.monotonic()
        tenth = sent * 10 // self.total if self.total else 0
        if tenth <= self._last_tenth and now - self._last_time < _PROGRESS_EVERY:
            return
        self._last_tenth, self._last_time = tenth, now
        stored = ""
        if c.client.batched:
            stored = f", {c.confirm()} confirmed stored"
        of = f"/{self.total} ({100 * sent // self.total}%)" if self.total else ""
        print(f"simulate: {now - self.t0:.1f} s, {sent}{of} event(s) sent{stored}", file=sys.stderr, flush=True)


_PROGRESS_EVERY = 10.0


def cmd_simulate(args: argparse.Namespace) -> int:
    from ..simulation import simulate

    total = args.n
    if args.duration is not None:
        by_time = int(args.duration * args.rate)
        total = by_time if total is None else min(total, by_time)
    if args.fast and total is None:
        raise UsageError("simulate --fast needs --n or --duration (it would never end)")
    stop = threading.Event()
    restore = None
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C ends the run cleanly with a count; a second Ctrl-C interrupts at once.
        def on_interrupt(signum: int, frame: Any) -> None:
            stop.set()
            signal.signal(signal.SIGINT, restore or signal.default_int_handler)

        restore = signal.signal(signal.SIGINT, on_interrupt)
    try:
        with client_from(args) as client:
            confirmation = Confirmation(client)
            how_long = f"{total} events" if total is not None else "until Ctrl-C"
            print(
                f"simulating {args.sources} sensor(s) at {args.rate:g} events/s to {client.url}, {how_long}"
                + ("" if args.fast else "; Ctrl-C to stop"),
                file=sys.stderr,
                flush=True,
            )
            progress = _Progress(confirmation, total)
            try:
                sent = simulate(
                    client,
                    rate=args.rate,
                    duration=args.duration,
                    n=args.n,
                    sources=args.sources,
                    seed=args.seed,
                    realtime=not args.fast,
                    stop=stop,
                    confirm=False,
                    progress=progress,
                )
            except TheiaError as exc:
                if isinstance(exc, UsageError):
                    raise
                return confirmation.failed(exc)
            confirmation.sent(sent - confirmation.count)
            return confirmation.finish()
    finally:
        if restore is not None:
            signal.signal(signal.SIGINT, restore)
