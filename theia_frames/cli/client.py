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
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import re
import shutil
import signal
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from ..client import DEFAULT_TIMEOUT, DEFAULT_URL, Client
from ..event import Event
from ..filter import EventFilter
from ..timeparse import duration_arg, time_arg

__all__ = ["register"]

_URL_ENV = "THEIA_URL"
_FORMATS = ("table", "csv", "jsonl")


# --------------------------------------------------------------------------- options


def _add_connection_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url",
        default=os.environ.get(_URL_ENV, DEFAULT_URL),
        help=f"collector URL (default: ${_URL_ENV} or {DEFAULT_URL})",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"connect/send/answer timeout (default {DEFAULT_TIMEOUT:g})",
    )
    p.add_argument("--no-batch", action="store_true", help="never offer the batched-transfer extension")


# argparse takes "-15m" for an unknown option; values that look like a signed
# relative time (or number) are read as values instead, so "--start -15m" works.
_SIGNED_VALUE = re.compile(r"^-(\d+(\.\d*)?|\.\d+)([a-z]+(\d+(\.\d*)?[a-z]+)*)?$")


def _add_filter_options(p: argparse.ArgumentParser, *, order: bool = True) -> None:
    p._negative_number_matcher = _SIGNED_VALUE  # type: ignore[attr-defined]
    g = p.add_argument_group("filter")
    g.add_argument("--start", type=time_arg, metavar="TIME", help="events at or after TIME (epoch, ISO-8601, -15m)")
    g.add_argument("--end", type=time_arg, metavar="TIME", help="events at or before TIME")
    g.add_argument(
        "--tag", action="append", default=[], metavar="REGEX", help="a tag pattern every event must have (repeatable)"
    )
    g.add_argument("--content", metavar="REGEX", help="a pattern found in the content")
    if order:
        g.add_argument("--order", choices=("asc", "desc"), help="order by timestamp")


def _filter_from(args: argparse.Namespace) -> EventFilter:
    return EventFilter(
        start=args.start,
        end=args.end,
        tags=tuple(args.tag),
        content=args.content,
        order=getattr(args, "order", None),
    )


def _client_from(args: argparse.Namespace, **kw: Any) -> Client:
    return Client(args.url, timeout=args.timeout, batch=not args.no_batch, **kw)


def _split_tags(values: Iterable[str]) -> list[str]:
    return [t for v in values for t in v.split(",") if t]


def register(subparsers: Any) -> None:
    """Add the ``send``, ``find``, ``live`` and ``simulate`` commands."""
    p = subparsers.add_parser(
        "send",
        help="send an event (or one per line of stdin)",
        description="Send one event built from the arguments, or one event per line of standard input.",
    )
    _add_connection_options(p)
    p.add_argument("text", nargs="?", help="the event content")
    p.add_argument("--content", help="the event content (instead of the positional argument)")
    p.add_argument("--source", default="", help="the event source, e.g. /dev/sensors/temp-1")
    p.add_argument("--tag", action="append", default=[], help="a tag (repeatable, or comma-separated)")
    p.add_argument("--timestamp", type=time_arg, metavar="TIME", help="event time (default: now)")
    p.add_argument("--id", help="event id (default: a new UUID4)")
    p.add_argument(
        "--stdin", action="store_true", help="send one event per non-empty line of stdin (the line is its content)"
    )
    p.set_defaults(func=cmd_send)

    p = subparsers.add_parser(
        "find",
        help="print past events",
        description="Print past events matching a filter: a table, CSV or JSON lines, or write them to a file.",
    )
    _add_connection_options(p)
    _add_filter_options(p)
    p.add_argument("--format", choices=_FORMATS, default=None, help="output format (default: table)")
    p.add_argument("--out", metavar="PATH", help="write to PATH instead (.parquet, .csv, .jsonl)")
    p.add_argument("--limit", type=int, metavar="N", help="stop after N events")
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
    _add_connection_options(p)
    _add_filter_options(p, order=False)
    p.add_argument("--format", choices=_FORMATS, default="table", help="output format (default: table)")
    p.add_argument("--limit", type=int, metavar="N", help="stop after N events")
    p.set_defaults(func=cmd_live)

    p = subparsers.add_parser(
        "simulate",
        help="send sensor-like events at a given rate",
        description="Send sensor-like readings (numbers with units from several sources) in real time.",
    )
    _add_connection_options(p)
    p.add_argument("--rate", type=float, default=10.0, help="events per second (default 10)")
    p.add_argument("--duration", type=duration_arg, metavar="DURATION", help="how long, e.g. 30s, 5m")
    p.add_argument("--n", type=int, metavar="N", help="how many events")
    p.add_argument("--sources", type=int, default=4, help="number of simulated sensors (default 4)")
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


class _Printer:
    """Writes events to a text stream, one line (or record) each, as they come."""

    def __init__(self, out: TextIO, fmt: str) -> None:
        self.out = out
        self.fmt = fmt
        self.count = 0
        self._csv = csv.writer(out, lineterminator="\n") if fmt == "csv" else None
        self._width = shutil.get_terminal_size((120, 24)).columns if out.isatty() else None
        self._header = False

    def _write_header(self) -> None:
        self._header = True
        if self.fmt == "table":
            self.out.write(f"{'TIME (UTC)':<27}  {'SOURCE':<24}  {'TAGS':<20}  CONTENT\n")
        elif self._csv is not None:
            self._csv.writerow(["id", "timestamp", "source", "tags", "content"])

    def write(self, event: Event) -> None:
        # counted first: Ctrl-C may interrupt right after the line is out
        self.count += 1
        if not self._header:
            self._write_header()
        if self.fmt == "table":
            line = (
                f"{_iso(event.timestamp):<27}  {_one_line(event.source):<24}  "
                f"{','.join(event.tags):<20}  {_one_line(event.content)}"
            )
            if self._width and len(line) > self._width:
                line = line[: max(self._width - 1, 0)] + "…"
            self.out.write(line + "\n")
        elif self._csv is not None:
            self._csv.writerow([event.id, repr(float(event.timestamp)), event.source, ",".join(event.tags), event.content])
        else:
            record = {
                "id": event.id,
                "timestamp": event.timestamp,
                "source": event.source,
                "tags": event.tags,
                "content": event.content,
            }
            self.out.write(json.dumps(record, ensure_ascii=False) + "\n")

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
    if limit <= 0:
        return
    for i, event in enumerate(events, 1):
        yield event
        if i >= limit:
            return


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


def cmd_send(args: argparse.Namespace) -> int:
    tags = _split_tags(args.tag)
    content = args.content if args.content is not None else args.text
    with _client_from(args) as client:
        if args.stdin:
            if content is not None:
                raise SystemExit("theia-frames send: give either a content or --stdin, not both")
            sent = 0
            stdin = sys.stdin.buffer
            for chunk in _stdin_chunks(stdin):
                events = []
                for raw in chunk:
                    text = raw.decode("utf-8", "replace").rstrip("\r\n")
                    if text:
                        events.append(Event(source=args.source, tags=list(tags), content=text))
                if events:
                    sent += client.send_many(events)
            print(f"sent {sent} event(s) to {client.url}", file=sys.stderr)
            return 0
        kw: dict[str, Any] = {"source": args.source, "tags": tags, "content": content or ""}
        if args.timestamp is not None:
            kw["timestamp"] = args.timestamp
        if args.id:
            kw["id"] = args.id
        event = Event(**kw)
        client.send(event)
        print(event.id)
    return 0


def cmd_find(args: argparse.Namespace) -> int:
    kw: dict[str, Any] = {"strict": args.strict}
    if args.idle_timeout is not None:
        kw["idle_timeout"] = args.idle_timeout
    with _client_from(args, **kw) as client:
        result = client.find(_filter_from(args))
        with result:
            if args.out:
                from ..export import write_events

                options = {} if args.format in (None, "table") else {"format": args.format}
                if args.limit is not None:
                    n = write_events(list(_limited(result, args.limit)), args.out, **options)
                else:
                    n = write_events(result, args.out, **options)
                print(f"wrote {n} event(s) to {args.out}", file=sys.stderr)
            else:
                printer = _Printer(sys.stdout, args.format or "table")
                for event in _limited(result, args.limit):
                    printer.write(event)
                printer.flush()
                if printer.fmt == "table":
                    print(f"{printer.count} event(s)", file=sys.stderr)
            _report_skipped(result)
    return 0


def cmd_live(args: argparse.Namespace) -> int:
    printer = _Printer(sys.stdout, args.format)
    with _client_from(args) as client:
        stream = client.receive(_filter_from(args))
        try:
            with stream:
                for event in _limited(stream, args.limit):
                    printer.write(event)
                    printer.flush()
        except KeyboardInterrupt:
            pass
        finally:
            print(f"\nreceived {printer.count} event(s)", file=sys.stderr)
            _report_skipped(stream)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from ..simulation import simulate

    stop = threading.Event()
    restore = None
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C ends the run cleanly with a count; a second Ctrl-C interrupts at once.
        def on_interrupt(signum: int, frame: Any) -> None:
            stop.set()
            signal.signal(signal.SIGINT, restore or signal.default_int_handler)

        restore = signal.signal(signal.SIGINT, on_interrupt)
    try:
        with _client_from(args) as client:
            sent = simulate(
                client,
                rate=args.rate,
                duration=args.duration,
                n=args.n,
                sources=args.sources,
                seed=args.seed,
                realtime=not args.fast,
                stop=stop,
            )
            print(f"sent {sent} event(s) to {client.url}", file=sys.stderr)
    finally:
        if restore is not None:
            signal.signal(signal.SIGINT, restore)
    return 0
