"""The ``serve`` command: run the embedded collector until Ctrl-C or SIGTERM.

Examples::

    theia-frames serve --db events.db
    theia-frames serve --db events.db --host 0.0.0.0 --port 6433 --log-level debug
    theia-frames serve --db events.db --max-connections 2000 --idle-timeout none

Every limit on what one client can make the collector spend has a flag (see
``theia-frames serve --help`` and :class:`~theia_frames.server.collector.Collector`).
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import sys
import threading
from typing import Any

from ..server.collector import (
    DEFAULT_FIND_BATCH,
    DEFAULT_FIND_STALL_TIMEOUT,
    DEFAULT_FIND_WAIT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_LIVE_QUEUE,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
    DEFAULT_MAX_DECODED_SIZE,
    DEFAULT_MAX_EVENT_SIZE,
    DEFAULT_MAX_FIND_MEMORY,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_PATTERN_SIZE,
    DEFAULT_MAX_PATTERNS,
    DEFAULT_PORT,
)
from . import argtypes

__all__ = ["register"]

_LEVELS = ("debug", "info", "warning", "error")
# Seconds a stop may take (storing what was received, closing the store) before
# the process ends anyway: what was confirmed is committed already.
_STOP_DEADLINE = 10.0

# Seconds between two returns of freed memory to the system.
_TRIM_EVERY = 2.0

# (flag, option of Collector, default, metavar, help)
_LIMITS: tuple[tuple[str, str, Any, str, str], ...] = (
    ("--max-message-size", "max_message_size", DEFAULT_MAX_MESSAGE_SIZE, "BYTES", "largest message accepted"),
    (
        "--max-decoded-size", "max_decoded_size", DEFAULT_MAX_DECODED_SIZE, "BYTES",
        "most bytes the events of one /event message may decode to (compressed Arrow batches are checked before decompressing)",
    ),
    ("--max-event-size", "max_event_size", DEFAULT_MAX_EVENT_SIZE, "BYTES", "most bytes one event may decode to"),
    ("--max-patterns", "max_patterns", DEFAULT_MAX_PATTERNS, "N", "most patterns in one filter"),
    ("--max-pattern-size", "max_pattern_size", DEFAULT_MAX_PATTERN_SIZE, "BYTES", "longest pattern in a filter"),
    ("--max-connections", "max_connections", DEFAULT_MAX_CONNECTIONS, "N", "most connections open at once"),
    (
        "--max-connections-per-address", "max_connections_per_address", DEFAULT_MAX_CONNECTIONS_PER_ADDRESS, "N",
        "most connections open at once from one address",
    ),
    (
        "--max-find-memory", "max_find_memory", DEFAULT_MAX_FIND_MEMORY, "BYTES",
        "most bytes the running /find queries together hold read but not yet sent; at it a find waits before reading more",
    ),
)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run the embedded collector",
        description=(
            "Run a theia collector (endpoints /event, /find, /live) with an SQLite store until "
            "Ctrl-C or SIGTERM. Peers speaking the plain protocol (the Go client, the upstream Python client) "
            "and theia-frames clients with batched transfer are served alike."
        ),
    )
    p.add_argument("--db", required=True, metavar="PATH", help="the SQLite file of the store (made if missing), or :memory:")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1, loopback only)")
    p.add_argument("--port", type=argtypes.port, default=DEFAULT_PORT, help=f"the port (default {DEFAULT_PORT}; 0 picks a free one)")
    p.add_argument(
        "--live-queue",
        type=argtypes.count,
        default=DEFAULT_LIVE_QUEUE,
        metavar="EVENTS",
        help=f"events a live subscriber may have waiting before it is dropped as too slow (default {DEFAULT_LIVE_QUEUE})",
    )
    p.add_argument(
        "--batch-size",
        type=argtypes.count,
        default=DEFAULT_FIND_BATCH,
        metavar="EVENTS",
        help=f"most events per Arrow message of a batched /find (default {DEFAULT_FIND_BATCH})",
    )
    limits = p.add_argument_group("limits on what one client can make the collector spend")
    for flag, dest, default, metavar, text in _LIMITS:
        limits.add_argument(flag, dest=dest, type=argtypes.count, default=default, metavar=metavar, help=f"{text} (default {default})")
    limits.add_argument(
        "--idle-timeout",
        type=argtypes.duration_or_none,
        default=DEFAULT_IDLE_TIMEOUT,
        metavar="SECONDS",
        help=(
            "close a connection that sends nothing for this long: /event between messages, /find and /live "
            f"before their filter (default {DEFAULT_IDLE_TIMEOUT:g}; 'none' for no limit)"
        ),
    )
    limits.add_argument(
        "--find-stall-timeout",
        type=argtypes.duration_or_none,
        default=DEFAULT_FIND_STALL_TIMEOUT,
        metavar="SECONDS",
        help=(
            "cut off a /find whose client takes none of its results for this long, ending its query "
            f"(default {DEFAULT_FIND_STALL_TIMEOUT:g}; 'none' for no limit)"
        ),
    )
    limits.add_argument(
        "--find-wait",
        type=argtypes.duration_arg,
        default=DEFAULT_FIND_WAIT,
        metavar="SECONDS",
        help=(
            "send what a /find has matched so far (or a sign that it is still matching) at least this often "
            f"(default {DEFAULT_FIND_WAIT:g})"
        ),
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
    from ..server.collector import serve  # looked up when the command runs: tests replace it

    trim = _memory_trimmer()
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
            live_queue=args.live_queue,
            batch_size=args.batch_size,
            token=args.token or None,
            certfile=args.certfile,
            keyfile=args.keyfile,
            idle_timeout=args.idle_timeout,
            find_stall_timeout=args.find_stall_timeout,
            find_wait=args.find_wait,
            **{dest: getattr(args, dest) for _, dest, _, _, _ in _LIMITS},
        )
        try:
            print(f"theia-frames collector listening on {collector.url} (store: {args.db}); Ctrl-C to stop", flush=True)
            while not stop.wait(_TRIM_EVERY):
                if trim is not None:
                    trim()
            print("stopping ...", file=sys.stderr, flush=True)
        finally:
            _stop_within(collector, _STOP_DEADLINE)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _memory_trimmer() -> Any:
    """A function giving the memory glibc keeps after large messages were freed
    back to the system (``malloc_trim``), or None on other platforms.

    glibc keeps freed heap memory for reuse; after clients sent 13.4 MB
    messages the collector's RSS stayed 400 MB above its baseline. The command
    calls this every few seconds: only its own process is concerned.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    return lambda: trim(0)


def _stop_within(collector: Any, deadline: float) -> None:
    """Stop the collector; when that takes longer than ``deadline`` seconds, end the
    process (exit status 1, saying so): a stop must not hang whatever runs."""
    stopper = threading.Thread(target=collector.stop, name="theia-frames-stop", daemon=True)
    stopper.start()
    stopper.join(deadline)
    if stopper.is_alive():
        print(
            f"the collector did not stop within {deadline:g} s; exiting without waiting "
            "(committed events are stored; events not yet committed are not)",
            file=sys.stderr,
            flush=True,
        )
        os._exit(1)
