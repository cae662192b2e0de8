"""Frame commands: ``import`` (an upstream file store into a database) and ``demo``.

Examples::

    theia-frames import /var/lib/theia/data --db events.db
    theia-frames import /var/lib/theia/data --db events.db --start 2024-05-01 --end 2024-05-02
    theia-frames demo
    theia-frames demo --out /tmp/demo --seconds 10
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..timeparse import time_arg
from . import argtypes

__all__ = ["register"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "import",
        help="load an upstream collector's file store into a database",
        description=(
            "Read the upstream theia collector's file store (a folder of files named <first>-<last>, "
            "or one such file) and add its events to the database of the embedded collector. "
            "Damaged regions are skipped and reported (file, byte offset, reason); every intact "
            "event is imported. Exits with 1 when something was skipped."
        ),
    )
    p.add_argument("path", help="the store folder, or one of its files")
    p.add_argument("--db", required=True, help="the database file to add the events to (made if missing)")
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
    from ..store import EventStore
    from ..storefiles import StoreReport, iter_store_batches

    report = StoreReport()
    added = 0
    # The path is checked (and a bad one reported) before the database is made.
    batches = iter_store_batches(args.path, start=args.start, end=args.end, strict=args.strict, report=report)
    first = next(batches, None)
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


def _demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    run_demo(args.out, seconds=args.seconds, rate=args.rate, sources=args.sources)
    return 0
