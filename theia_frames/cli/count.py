"""The ``count`` command: how many events match a filter, per time bucket, source or tag.

Examples::

    theia-frames count --start -1h --every 1m --by source
    theia-frames count --start 2024-05-01 --tag sensor --by tag --format csv > counts.csv
    theia-frames count --start -1d --every 1h --format parquet > counts.parquet

Our collector counts where the events are; a peer that cannot (the upstream
collector, ``--no-batch``) sends the events and they are counted here as they
arrive (:meth:`theia_frames.client.Client.count`). The filter options are those
of ``find``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import pandas as pd

from ..exceptions import UsageError
from .client import add_filter_options, filter_from
from .remote import add_connection_options, client_from

__all__ = ["register", "write_counts"]

_FORMATS = ("table", "csv", "jsonl", "parquet")


def register(subparsers: Any) -> None:
    """Add the ``count`` command."""
    p = subparsers.add_parser(
        "count",
        help="count past events per time bucket, source or tag",
        description="Count past events matching a filter: in all, per time bucket (--every), per source or "
        "tag (--by), or both; printed as a table, CSV, JSON lines or Parquet.",
    )
    add_connection_options(p)
    add_filter_options(p)
    p.add_argument("--every", metavar="FREQ", help="time buckets: a pandas frequency (1min, 1h, 1D) or a duration (1m, 90s)")
    p.add_argument("--by", choices=("source", "tag"), help="one count per source or per tag")
    p.add_argument("--format", choices=_FORMATS, default="table", help="output format (default: table)")
    p.add_argument(
        "--idle-timeout",
        type=float,
        metavar="SECONDS",
        default=None,
        help="for collectors that never close a find (upstream): silence that ends it",
    )
    p.set_defaults(func=cmd_count)


def write_counts(frame: pd.DataFrame, fmt: str, out: Any) -> None:
    """Write a frame of counts to the binary stream ``out`` as ``fmt``: its index (the
    bucket, or the group) as the first column.

    >>> import io
    >>> buf = io.BytesIO()
    >>> write_counts(pd.DataFrame({"count": [3]}), "csv", buf)
    >>> buf.getvalue().decode()
    'count\\n3\\n'
    """
    flat = frame.copy()
    flat.columns = [str(c) for c in flat.columns]
    if flat.index.name is not None:
        flat = flat.reset_index()
    if fmt == "table":
        out.write((flat.to_string(index=False) + "\n").encode())
    elif fmt == "csv":
        out.write(flat.to_csv(index=False).encode())
    elif fmt == "jsonl":
        text = flat.to_json(orient="records", lines=True, date_format="iso", date_unit="us")
        out.write((text if text.endswith("\n") or not text else text + "\n").encode())
    elif fmt == "parquet":
        flat.to_parquet(out, index=False)
    else:
        raise UsageError(f"unknown count format {fmt!r}: choose one of {', '.join(_FORMATS)}")


def cmd_count(args: argparse.Namespace) -> int:
    if args.format == "parquet" and sys.stdout.isatty():
        raise UsageError("--format parquet is binary: redirect stdout to a file")
    kw: dict[str, Any] = {}
    if args.idle_timeout is not None:
        kw["idle_timeout"] = args.idle_timeout
    with client_from(args, **kw) as client:
        frame = client.count(filter_from(args), args.every, args.by)
    sys.stdout.flush()
    write_counts(frame, args.format, sys.stdout.buffer)
    sys.stdout.buffer.flush()
    return 0
