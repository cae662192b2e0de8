"""The ``serve`` command: run the embedded collector until Ctrl-C.

Examples::

    theia-frames serve --db events.db
    theia-frames serve --db events.db --host 0.0.0.0 --port 6433 --log-level debug
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Any

from ..collector import DEFAULT_LIVE_QUEUE, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_PORT
from . import argtypes

__all__ = ["register"]

_LEVELS = ("debug", "info", "warning", "error")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run the embedded collector",
        description=(
            "Run a theia collector (endpoints /event, /find, /live) with an SQLite store until "
            "Ctrl-C. Peers speaking the plain protocol (the Go client, the upstream Python client) "
            "and theia-frames clients with batched transfer are served alike."
        ),
    )
    p.add_argument("--db", required=True, metavar="PATH", help="the SQLite file of the store (made if missing), or :memory:")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1, loopback only)")
    p.add_argument("--port", type=argtypes.port, default=DEFAULT_PORT, help=f"the port (default {DEFAULT_PORT}; 0 picks a free one)")
    p.add_argument(
        "--max-message-size",
        type=argtypes.count,
        default=DEFAULT_MAX_MESSAGE_SIZE,
        metavar="BYTES",
        help=f"largest message accepted (default {DEFAULT_MAX_MESSAGE_SIZE})",
    )
    p.add_argument(
        "--live-queue",
        type=argtypes.count,
        default=DEFAULT_LIVE_QUEUE,
        metavar="EVENTS",
        help=f"events a live subscriber may have waiting before it is dropped as too slow (default {DEFAULT_LIVE_QUEUE})",
    )
    p.add_argument(
        "--token",
        default=os.environ.get("THEIA_TOKEN"),
        help="require 'Authorization: Bearer TOKEN' from every client (default: $THEIA_TOKEN; none when unset)",
    )
    p.add_argument("--certfile", metavar="PEM", help="serve wss:// (TLS) with this certificate chain")
    p.add_argument("--keyfile", metavar="PEM", help="the private key of --certfile (if not in the same file)")
    p.add_argument("--log-level", choices=_LEVELS, default="info", help="logging level (default info)")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from ..collector import serve

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # websockets reports every connection at INFO; keep that for --log-level debug.
    if args.log_level != "debug":
        logging.getLogger("websockets").setLevel(logging.WARNING)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        collector = serve(
            db=args.db,
            host=args.host,
            port=args.port,
            max_message_size=args.max_message_size,
            live_queue=args.live_queue,
            token=args.token or None,
            certfile=args.certfile,
            keyfile=args.keyfile,
        )
        try:
            print(f"theia-frames collector listening on {collector.url} (store: {args.db}); Ctrl-C to stop", flush=True)
            while not stop.wait(0.5):
                pass
            print("stopping ...", file=sys.stderr, flush=True)
        finally:
            collector.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
