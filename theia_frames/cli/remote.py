"""What the commands that talk to a collector share: the connection options,
the client they make, and the confirmation of what they sent.

A command that sends (``send``, ``simulate``, ``import --url``) asks the
collector to confirm that the events were stored (:meth:`Client.flush`) as it
goes and once more at the end, and says what happened on stderr:

- confirmed: ``stored N event(s) in URL (confirmed by the collector)``, exit 0;
- refused or failed: ``theia-frames: error: N event(s) sent, M confirmed
  stored; <the collector's reason>``, exit 1;
- a peer that cannot confirm (the upstream collector, a plain peer,
  ``--no-batch``): ``sent N event(s) to URL; not confirmed: ...``, exit 0.
  The events went out as the plain protocol allows and nothing failed; the
  line says that storage is unknown (it never says "stored").
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from ..client import DEFAULT_TIMEOUT, DEFAULT_URL, Client
from ..exceptions import TheiaError, UnconfirmedError

__all__ = [
    "URL_ENV",
    "add_connection_options",
    "client_from",
    "Confirmation",
]

#: The environment variable that names the collector when ``--url`` is not given.
URL_ENV = "THEIA_URL"

#: Seconds between the confirmations asked for while a command is still sending.
CONFIRM_EVERY = 1.0


def add_connection_options(p: argparse.ArgumentParser, *, url: bool = True) -> None:
    """Add ``--url`` (unless ``url=False``: the command adds its own), ``--timeout`` and ``--no-batch``."""
    if url:
        p.add_argument(
            "--url",
            default=os.environ.get(URL_ENV, DEFAULT_URL),
            help=f"collector URL (default: ${URL_ENV} or {DEFAULT_URL})",
        )
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"connect/send/answer timeout, a confirmation included (default {DEFAULT_TIMEOUT:g})",
    )
    p.add_argument("--no-batch", action="store_true", help="never offer the batched-transfer extension (no confirmations)")


def client_from(args: argparse.Namespace, **kw: Any) -> Client:
    """The client the options in ``args`` describe."""
    return Client(args.url, timeout=args.timeout, batch=not args.no_batch, **kw)


class Confirmation:
    """Confirms, with the collector, what a command sent, and reports it on stderr.

    Call :meth:`sent` after each send (it asks for a confirmation at most every
    :data:`CONFIRM_EVERY` seconds, so a failure stops a long run early), then
    :meth:`finish` for the exit code. A :class:`~theia_frames.exceptions.TheiaError`
    from sending or confirming goes to :meth:`failed`.
    """

    def __init__(self, client: Client, *, every: float = CONFIRM_EVERY) -> None:
        self.client = client
        self.every = every
        self.count = 0
        self._last = time.monotonic()
        # what the client's ledger held before: the line reports what this command's sends did
        self._before = client.ledger.counts()

    def sent(self, n: int) -> None:
        """Count ``n`` more events sent; confirm now if it is time (raises what a flush raises)."""
        self.count += n
        if self.client.batched and time.monotonic() - self._last >= self.every:
            self.confirm()

    def confirm(self) -> int:
        """Confirm everything sent so far (raises what :meth:`Client.flush` raises)."""
        stored = self.client.flush(self.client.timeout)
        self._last = time.monotonic()
        return stored

    def finish(self, *, quiet: bool = False) -> int:
        """The final confirmation and its line on stderr; returns the exit code."""
        url = self.client.url
        if self.count == 0:
            # nothing was sent, so there is nothing a collector could have confirmed
            if not quiet:
                print(f"sent 0 events to {url}: there was nothing to send", file=sys.stderr)
            return 0
        try:
            self.confirm()
        except UnconfirmedError:
            print(
                f"sent {self.count} event(s) to {url}; not confirmed: this collector cannot confirm "
                "that they were stored (the upstream collector or another plain peer, or --no-batch)",
                file=sys.stderr,
            )
            return 0
        except TheiaError as exc:
            return self.failed(exc)
        if not quiet:
            stored, repeats = (now - was for now, was in zip(self.client.ledger.counts(), self._before))
            if repeats:
                print(
                    f"stored {stored} event(s) in {url} (confirmed by the collector); "
                    f"{repeats} were already stored (exact repeats, not stored again)",
                    file=sys.stderr,
                )
            else:
                print(f"stored {stored} event(s) in {url} (confirmed by the collector)", file=sys.stderr)
        return 0

    def failed(self, exc: TheiaError) -> int:
        """Report a failure to send or store; returns the exit code (1)."""
        stored = self.client.stored
        print(
            f"theia-frames: error: {self.count} event(s) sent, {stored} confirmed stored: {exc}",
            file=sys.stderr,
        )
        return 1
