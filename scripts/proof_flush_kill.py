"""Proof: what ``Client.flush()`` confirmed survives a SIGKILL of the collector.

    python scripts/proof_flush_kill.py                      # 3 rounds of 100,000 events
    python scripts/proof_flush_kill.py --events 5000 --rounds 1

The collector runs in its own process (``theia-frames serve``) on a database
file. Each round:

1. a client sends ``--events`` sensor events (``send_many``, batched transfer)
   and calls ``flush()``, which returns once the collector has confirmed that
   they are committed to its store;
2. the client sends ``--extra`` more events without flushing and, while they
   are arriving, the collector is killed with SIGKILL (no chance to store,
   close or clean up anything);
3. a new collector starts on the same file: a ``/find`` must return every
   confirmed event with all its fields, whatever happened to the unconfirmed
   ones (each is there whole or not at all).

Rounds add up on the same file; at the end a normal stop and
``PRAGMA integrity_check`` on the file. The exit status is 1 when anything
confirmed was missing or changed.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from fuzz_collector import CollectorProcess, integrity_check  # noqa: E402

__all__ = ["KillRound", "KillResult", "run", "main"]

T0 = 1_700_000_000.0


@dataclass
class KillRound:
    sent: int = 0
    confirmed: int = 0
    send_seconds: float = 0.0
    flush_seconds: float = 0.0
    extra_sent: int = 0
    found_confirmed: int = 0
    changed: int = 0
    extra_found: int = 0
    stored_after_restart: int = 0
    restart_seconds: float = 0.0


@dataclass
class KillResult:
    rounds: list[KillRound] = field(default_factory=list)
    integrity: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        lines = []
        for i, r in enumerate(self.rounds, 1):
            lines.append(
                f"round {i}: sent {r.sent:,} in {r.send_seconds:.1f} s; flush() confirmed {r.confirmed:,} "
                f"after {r.flush_seconds:.2f} s more; {r.extra_sent:,} unconfirmed sent, then SIGKILL; "
                f"restarted in {r.restart_seconds:.1f} s: {r.found_confirmed:,} of {r.sent:,} confirmed events found "
                f"({r.changed} changed), {r.extra_found:,} of the unconfirmed ones; "
                f"{r.stored_after_restart:,} events in the store"
            )
        lines.append(f"PRAGMA integrity_check after a normal stop: {self.integrity}")
        lines.append(f"problems: {len(self.problems)}")
        lines.extend(f"  - {p}" for p in self.problems)
        return "\n".join(lines)


def _events(n: int, seed: int, start: float) -> list[Any]:
    from theia_frames.simulation import sensor_events

    return list(sensor_events(n, sources=8, rate=10_000, start=start, seed=seed))


def _key(e: Any) -> tuple[Any, ...]:
    return (e.id, e.timestamp, e.source, tuple(e.tags), e.content)


def _stored(url: str) -> dict[str, Any]:
    from theia_frames import Client, EventFilter

    with Client(url) as client:
        return {e.id: e for e in client.find(EventFilter())}


def run(*, events: int = 100_000, extra: int = 10_000, rounds: int = 3, workdir: str | None = None,
        log: Any = None) -> KillResult:
    from theia_frames import Client

    say = log or (lambda *_: None)
    result = KillResult()
    tmp = tempfile.TemporaryDirectory(prefix="theia-kill-") if workdir is None else None
    where = Path(workdir or tmp.name)  # type: ignore[union-attr]
    where.mkdir(parents=True, exist_ok=True)
    db = where / "kill.db"
    confirmed: dict[str, tuple[Any, ...]] = {}
    try:
        collector = CollectorProcess(db, options=["--log-level", "warning"]).start()
        for r in range(rounds):
            rnd = KillRound()
            start = T0 + r * 100_000
            batch = _events(events, seed=2 * r + 1, start=start)
            more = _events(extra, seed=2 * r + 2, start=start + events / 10_000 + 1) if extra else []
            with Client(collector.url) as client:
                t0 = time.monotonic()
                client.send_many(batch)
                rnd.send_seconds = time.monotonic() - t0
                t1 = time.monotonic()
                rnd.confirmed = client.flush(timeout=300)
                rnd.flush_seconds = time.monotonic() - t1
                rnd.sent = len(batch)
                for e in batch:
                    confirmed[e.id] = _key(e)
                # Unconfirmed traffic in flight when the process dies.
                half = len(more) // 2
                if more:
                    client.send_many(more[:half])
                collector.kill()
                try:
                    client.send_many(more[half:])
                    rnd.extra_sent = len(more)
                except Exception:  # the collector is gone: part of them never left
                    rnd.extra_sent = half
            say(f"round {r + 1}: {rnd.confirmed:,} confirmed, killed")
            t2 = time.monotonic()
            collector = CollectorProcess(db, options=["--log-level", "warning"]).start()
            rnd.restart_seconds = time.monotonic() - t2
            stored = _stored(collector.url)
            rnd.stored_after_restart = len(stored)
            mine = {e.id for e in batch}
            rnd.found_confirmed = sum(1 for i in mine if i in stored)
            rnd.changed = sum(1 for i in mine if i in stored and _key(stored[i]) != confirmed[i])
            rnd.extra_found = sum(1 for e in more if e.id in stored and _key(stored[e.id]) == _key(e))
            lost_before = sum(1 for i, k in confirmed.items() if i not in stored or _key(stored[i]) != k)
            if rnd.confirmed != len(batch):
                result.problems.append(f"round {r + 1}: flush() confirmed {rnd.confirmed:,} of {len(batch):,}")
            if lost_before:
                result.problems.append(f"round {r + 1}: {lost_before:,} confirmed event(s) missing or changed")
            damaged = sum(1 for e in more if e.id in stored and _key(stored[e.id]) != _key(e))
            if damaged:
                result.problems.append(f"round {r + 1}: {damaged} unconfirmed event(s) stored with other fields")
            result.rounds.append(rnd)
        status = collector.stop()
        if status != 0:
            result.problems.append(f"the collector exited with status {status} on a normal stop")
        result.integrity = integrity_check(db)
        if result.integrity != "ok":
            result.problems.append(f"PRAGMA integrity_check: {result.integrity}")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="events flushed per round (default 100,000)")
    parser.add_argument("--extra", type=int, default=10_000, help="unconfirmed events in flight at the kill")
    parser.add_argument("--rounds", type=int, default=3, help="kill-and-restart rounds on one file (default 3)")
    args = parser.parse_args(argv)
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}")
    result = run(events=args.events, extra=args.extra, rounds=args.rounds,
                 log=lambda m: print(m, file=sys.stderr, flush=True))
    print(result.format())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
