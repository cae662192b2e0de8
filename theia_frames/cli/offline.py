"""Frame commands: ``import`` (an upstream file store into a database) and ``demo``.

Examples::

    theia-frames import /var/lib/theia/data --db events.db
    theia-frames import /var/lib/theia/data --db events.db --start 2024-05-01 --end 2024-05-02
    theia-frames import /var/lib/theia/data --url ws://127.0.0.1:6433
    theia-frames demo
    theia-frames demo --out /tmp/demo --seconds 10
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import Any

from ..exceptions import TheiaError, UsageError
from . import argtypes
from .argtypes import time_arg
from .remote import Confirmation, add_connection_options, client_from

__all__ = ["register"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "import",
        help="load an upstream collector's file store into a database",
        description=(
            "Read the upstream theia collector's file store (a folder of files named <first>-<last>, "
            "or one such file) and add its events to the database of the embedded collector "
            "(--db), or send them to a running collector (--url). "
            "Damaged regions are skipped and reported (file, byte offset, reason); every intact "
            "event is imported. Exits with 1 when something was skipped, or when the collector "
            "did not store the events (with its reason); a collector that cannot confirm "
            "(upstream, --no-batch) is said so on stderr, exit 0."
        ),
    )
    p.add_argument("path", help="the store folder, or one of its files")
    into = p.add_mutually_exclusive_group(required=True)
    into.add_argument("--db", help="the database file to add the events to (made if missing)")
    into.add_argument(
        "--url",
        help="a running collector to send the events to instead, e.g. ws://127.0.0.1:6433; "
        "the import waits for it to confirm that they were stored",
    )
    add_connection_options(p, url=False)
    p.add_argument("--start", type=time_arg, metavar="TIME", help="only events at or after TIME")
    p.add_argument("--end", type=time_arg, metavar="TIME", help="only events at or before TIME")
    p.add_argument("--strict", action="store_true", help="stop at the first damaged region instead")
    p.add_argument("--quiet", "-q", action="store_true", help="print only problems")
    p.set_defaults(func=_import)

    d = subparsers.add_parser(
        "demo",
        help="a collector, simulated sensors, a DataFrame, a summary and a plot",
        description=(
            "Start an embedded collector on a temporary database, simulate a few sensors for a few "
            "seconds, query their readings into a DataFrame, print a bucketed summary and write a "
            "PNG plot (needs matplotlib: pip install 'theia-frames[plot]')."
        ),
    )
    d.add_argument("--out", default="out", metavar="DIR", help="folder for the plot and the events (default: out)")
    d.add_argument("--seconds", type=argtypes.positive_number, default=3.0, metavar="N", help="how long to simulate (default 3)")
    d.add_argument("--rate", type=argtypes.positive_number, default=100.0, metavar="N", help="events per second (default 100)")
    d.add_argument("--sources", type=argtypes.count, default=4, metavar="N", help="simulated sensors (default 4)")
    d.set_defaults(func=_demo)


def _import(args: argparse.Namespace) -> int:
    from ..server.store import EventStore
    from ..frames.storefiles import StoreReport, iter_store_batches, not_a_store

    why = not_a_store(args.path)
    if why is not None:
        raise UsageError(
            f"{args.path} is not a theia store: {why}. To send a log file's lines with their own times, use "
            f"theia-frames import-log {args.path} --format syslog|access|apache-error|iso|python|jsonl|logfmt "
            "(or --regex/--template; see import-log --help)"
        )
    report = StoreReport()
    added = 0
    # The path is checked (and a bad one reported) before the database is made.
    batches = iter_store_batches(args.path, start=args.start, end=args.end, strict=args.strict, report=report)
    first = next(batches, None)
    if args.url:
        return _import_remote(args, first, batches, report)
    store = EventStore(args.db)
    try:
        if first is not None:
            added += store.add_many(first)
        for batch in batches:
            added += store.add_many(batch)
    finally:
        store.close()
    if not args.quiet or not report.ok:
        print(report.summary(), file=sys.stdout if report.ok else sys.stderr)
    if not args.quiet:
        again = report.events - added
        print(f"imported {added} events into {args.db}" + (f" ({again} were already there)" if again else ""))
    return 0 if report.ok else 1


def _import_remote(args: argparse.Namespace, first: Any, batches: Iterator[Any], report: Any) -> int:
    with client_from(args) as client:
        confirmation = Confirmation(client)
        try:
            if first is not None:
                confirmation.sent(client.send_many(first))
            for batch in batches:
                confirmation.sent(client.send_many(batch))
        except TheiaError as exc:
            if isinstance(exc, UsageError):
                raise
            return confirmation.failed(exc)
        if not args.quiet or not report.ok:
            print(report.summary(), file=sys.stdout if report.ok else sys.stderr)
        code = confirmation.finish(quiet=args.quiet)
    return code or (0 if report.ok else 1)


def _demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    run_demo(args.out, seconds=args.seconds, rate=args.rate, sources=args.sources)
    return 0
