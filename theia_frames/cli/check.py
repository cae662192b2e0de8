"""The ``check`` command: verify an event store file, and salvage what is intact.

Examples::

    theia-frames check --db events.db
    theia-frames check --db events.db --salvage rescued.db
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "check",
        help="verify an event store file; --salvage copies its intact chunks into a new one",
        description=(
            "Verify every chunk of the embedded collector's store file (its checksum, its Arrow data "
            "in full, its index entries, its arrival numbers) and SQLite's own integrity_check, "
            "without changing the file. Each damaged chunk is reported with its time range and how "
            "many events it held. Exits with 1 when anything is damaged. Stop the collector first: "
            "a running one may be writing the file."
        ),
    )
    p.add_argument("--db", required=True, metavar="PATH", help="the store file to check")
    p.add_argument(
        "--salvage",
        metavar="NEW",
        help="copy every intact chunk, as stored, into the new store file NEW (which must not exist), "
        "and say what was left behind",
    )
    p.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    from ..server.verify import check_store, salvage_store

    report = check_store(args.db)
    print(f"{report.path}: format {report.format}, {report.chunks:,} chunks checked, {report.events:,} events intact")
    if report.wal_bytes is not None:
        print(
            f"write-ahead log: {report.path}-wal, {report.wal_bytes:,} bytes, read with the file: it holds committed "
            f"events not yet folded into the file (the collector is running or was not stopped normally); "
            f"it is part of the store: keep it beside the file, copy or move both"
        )
    if report.integrity:
        for line in report.integrity[:20]:
            print(f"SQLite integrity_check: {line}")
        if len(report.integrity) > 20:
            print(f"SQLite integrity_check: ... and {len(report.integrity) - 20:,} more")
    else:
        print("SQLite integrity_check: ok")
    for damage in report.damaged:
        print(f"damaged: {damage.describe()}")
    if report.damaged:
        lost = sum(d.rows or 0 for d in report.damaged)
        print(f"{len(report.damaged):,} of {report.chunks:,} chunks damaged ({lost:,} events)")
    if args.salvage:
        saved = salvage_store(args.db, args.salvage)
        print(f"salvaged {saved.chunks:,} chunks ({saved.events:,} events) into {saved.path}")
        if saved.left_behind:
            for damage in saved.left_behind:
                print(f"left behind: {damage.describe()}")
        else:
            print("left behind: nothing")
    if report.ok:
        print("ok")
        return 0
    return 1
