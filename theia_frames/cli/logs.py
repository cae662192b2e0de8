"""The ``import-log`` command, and the options that say how a log's lines read (``send --stdin`` takes them too).

Examples::

    theia-frames import-log /var/log/syslog --format syslog
    theia-frames import-log access.log --format access --url ws://127.0.0.1:6433
    theia-frames import-log app.log --template '<Date> <Time> <Level> <Component>: <Content>' \\
        --time-format '%y%m%d %H%M%S' --tz Europe/Berlin --tag-from Level
    tail -f app.log | theia-frames send --stdin --format python --source app.log

Each file is read a chunk at a time (:func:`theia_frames.frames.logs.iter_log`), each
chunk sent as it is made, with a progress bar on a terminal, and confirmed as
``send`` confirms (:mod:`theia_frames.cli.remote`). Lines that were not read
are listed on stderr (the first few, all counted) and make the exit status 1,
after everything else was sent.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..checks import positive_int
from ..exceptions import TheiaError, UsageError
from .remote import Confirmation, add_connection_options, client_from

__all__ = ["register", "add_log_options", "log_options", "uses_log_format", "send_log"]


def add_log_options(p: argparse.ArgumentParser, *, required: bool) -> None:
    """Add the options that say how lines read: a format (``--format``, ``--regex`` or
    ``--template``; one is ``required`` or not), their times, and where source and tags come from."""
    from ..frames.logformats import LOG_FORMATS

    g = p.add_argument_group("log lines")
    how = g.add_mutually_exclusive_group(required=required)
    how.add_argument("--format", dest="log_format", choices=sorted(LOG_FORMATS), metavar="NAME",
                     help=f"a preset: {', '.join(sorted(set(f.name for f in LOG_FORMATS.values())))}")
    how.add_argument("--regex", metavar="REGEX",
                     help="your regex with named groups, matched against a whole line, e.g. "
                     "'(?P<timestamp>\\S+ \\S+) (?P<level>\\w+) (?P<content>.*)'")
    how.add_argument("--template", metavar="TEMPLATE",
                     help="a <Field> template as logparser's log_format, e.g. '<Date> <Time> <Level> <Component>: <Content>'")
    g.add_argument("--time-format", action="append", metavar="FORMAT",
                   help="how times read: strptime text ('%%d/%%b/%%Y:%%H:%%M:%%S %%z'), epoch or epoch_ms "
                   "(repeatable: the first that reads a time); a preset has its own")
    g.add_argument("--tz", metavar="ZONE", help="the zone of times without an offset, e.g. Europe/Berlin (default UTC)")
    g.add_argument("--year", type=int, metavar="YEAR",
                   help="the first line's year, for times without one (default: from the file's date, or now)")
    g.add_argument("--source-from", metavar="FIELD", help="the field that becomes the source (a preset has its own)")
    g.add_argument("--tag-from", action="append", metavar="FIELD", help="a field whose value becomes a tag (repeatable)")
    g.add_argument("--multiline", action=argparse.BooleanOptionalAction, default=None,
                   help="join lines that start no record to the record before them (a preset has its own default)")


def uses_log_format(args: argparse.Namespace) -> bool:
    """Whether the options name a format, so that lines are read for their own times."""
    return any(getattr(args, name, None) for name in ("log_format", "regex", "template"))


def log_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`~theia_frames.frames.logs.iter_log` the options give."""
    time_format: Any = args.time_format
    if time_format is not None and len(time_format) == 1:
        time_format = time_format[0]
    return {
        "format": args.log_format,
        "regex": args.regex,
        "template": args.template,
        "time_format": time_format,
        "tz": args.tz,
        "year": args.year,
        "source": args.source_from,
        "tags": args.tag_from,
        "multiline": args.multiline,
    }


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "import-log",
        help="send log files to a collector, each line with its own time",
        description=(
            "Read log files (syslog, access logs, Python logging, JSON lines, logfmt, or your own regex "
            "or <Field> template), each record with the time written in its line, and send them to a "
            "collector, confirmed as send confirms. Continuation lines (stack traces) join their record "
            "where the format allows. Lines that cannot be read are counted and listed on stderr; they "
            "make the exit status 1 after everything else was sent."
        ),
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="log files ('-' for standard input)")
    add_connection_options(p)
    add_log_options(p, required=True)
    p.add_argument("--tag", action="append", default=[], help="a tag every event gets besides (repeatable)")
    p.add_argument("--origin", metavar="SOURCE",
                   help="the source of records without a source field (default: the file's path)")
    p.add_argument("--batch-size", type=int, default=None, metavar="N", help="lines read and sent at a time")
    p.add_argument("--quiet", "-q", action="store_true", help="print only problems")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="a progress bar on stderr (default: on a terminal)")
    p.set_defaults(func=cmd_import_log)


def _bar(args: argparse.Namespace, total: int | None) -> Any:
    from ..frames.convert import show_progress_default

    show = args.progress if args.progress is not None else (show_progress_default() and not args.quiet)
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="import-log", leave=False)


def send_log(
    client: Any,
    confirmation: Confirmation,
    source: Any,
    options: dict[str, Any],
    *,
    origin: str | None = None,
    add_tags: list[str] | None = None,
    batch_size: int | None = None,
    bar: Any = None,
    confirm_each: bool = False,
) -> Any:
    """Read ``source`` (a path or a binary stream) with ``options`` and send each frame as it is made.

    Returns the :class:`~theia_frames.frames.logs.LogReport`. With
    ``confirm_each``, each frame is confirmed as soon as it is sent (a stream
    that a person watches). Raises what sending raises.
    """
    from ..frames.logs import DEFAULT_BATCH_SIZE, LogReport, iter_log

    report = LogReport()
    seen = 0
    for df in iter_log(
        source,
        **options,
        origin=origin,
        add_tags=add_tags or (),
        batch_size=batch_size or DEFAULT_BATCH_SIZE,
        report=report,
    ):
        confirmation.sent(client.send_many(df))
        if confirm_each and client.batched:
            confirmation.confirm()
        if bar is not None:
            bar.update(report.bytes_read - seen)
            seen = report.bytes_read
    if bar is not None:
        bar.update(report.bytes_read - seen)
    return report


def cmd_import_log(args: argparse.Namespace) -> int:
    options = log_options(args)
    positive_int("--batch-size", args.batch_size, none_ok=True)
    for name in args.files:
        if name != "-" and not os.path.isfile(name):
            raise UsageError(f"import-log: {name!r} is not a file")
    sizes = [os.path.getsize(n) for n in args.files if n != "-"]
    reports = []
    with client_from(args) as client:
        confirmation = Confirmation(client)
        bar = _bar(args, sum(sizes) if "-" not in args.files else None)
        try:
            for name in args.files:
                source: Any = sys.stdin.buffer if name == "-" else name
                reports.append(
                    send_log(client, confirmation, source, options, origin=args.origin, add_tags=args.tag,
                             batch_size=args.batch_size, bar=bar)
                )
        except TheiaError as exc:
            if isinstance(exc, UsageError):
                raise
            return confirmation.failed(exc)
        finally:
            if bar is not None:
                bar.close()
        unread = 0
        for report in reports:
            unread += report.unparsed
            if not report.ok:
                print(report.summary(), file=sys.stderr)
            elif not args.quiet:
                print(report.summary(), file=sys.stderr)
        code = confirmation.finish(quiet=args.quiet)
    return code or (1 if unread else 0)
