"""Proof: a damaged stored chunk is never served as data, and never crashes the collector.

    python scripts/proof_damaged_chunks.py                   # 400 offsets of a 65,536-event chunk
    python scripts/proof_damaged_chunks.py --events 5000 --tries 50
    python scripts/proof_damaged_chunks.py --every            # every offset of the chunk

A store file holds three chunks (10,000 events, ``--events`` events, 10,000 events). The
collector runs in its own process (``theia-frames serve``) on it, so a crash is seen as one.
For each try one byte of the middle chunk is flipped in the SQLite file (its Arrow data at a
random offset, every offset of its arrival numbers, each of its index entries), then the
client's default batched find and a plain find (``Client(url, batch=False)``) of all events
run, and the byte is put back. Each find is classed:

- ``exact``: every stored event, unchanged, in order;
- ``refused``: an error naming the damaged chunk (its time range and its events);
- ``altered``: events that differ from those stored, no error;
- ``short``: fewer events than stored, no error;
- ``crash``: the collector process died (it is restarted);
- ``other``: any other error.

Then ``theia-frames check`` on a damaged copy and ``--salvage``. The exit status is 1 when
any find was altered, short or a crash, or when check or salvage told less than the truth.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from fuzz_collector import CollectorProcess  # noqa: E402

__all__ = ["run", "main"]

T0 = 1_700_000_000.0
KINDS = ("exact", "refused", "altered", "short", "crash", "other")


def _key(e: Any) -> tuple[Any, ...]:
    return (e.id, e.timestamp, e.source, tuple(e.tags), e.content)


def _build(path: Path, middle: int) -> list[tuple[Any, ...]]:
    from theia_frames.protocol.arrow import events_to_batch
    from theia_frames.server.store import EventStore
    from theia_frames.simulation import sensor_events

    parts = [
        list(sensor_events(10_000, sources=4, rate=1_000, start=T0, seed=1)),
        list(sensor_events(middle, sources=4, rate=1_000, start=T0 + 100, seed=2)),
        list(sensor_events(10_000, sources=4, rate=1_000, start=T0 + 200 + middle / 1_000, seed=3)),
    ]
    with EventStore(path) as store:
        for part in parts:
            store.add_batch(events_to_batch(part), compact=False)
        assert len(store.chunks()) == 3, store.chunks()
    return [_key(e) for part in parts for e in part]


def _set(path: Path, column: str, value: Any) -> None:
    db = sqlite3.connect(path)
    try:
        db.execute(f"UPDATE chunks SET {column} = ? WHERE seq = 2", (value,))
        db.commit()
    finally:
        db.close()


def _get(path: Path, column: str) -> Any:
    db = sqlite3.connect(path)
    try:
        return db.execute(f"SELECT {column} FROM chunks WHERE seq = 2").fetchone()[0]
    finally:
        db.close()


def _flipped(value: Any, offset: int) -> Any:
    if isinstance(value, bytes):
        data = bytearray(value)
        data[offset] ^= 0x5A
        return bytes(data)
    if isinstance(value, float):
        return value + (1e-3 if offset % 2 else -1e-3)
    return value + (1 if offset % 2 else -1)


def _find(url: str, batched: bool, expected: list[tuple[Any, ...]], collector: CollectorProcess) -> tuple[str, str]:
    from theia_frames import Client, EventFilter
    from theia_frames.exceptions import TheiaError

    try:
        with Client(url, batch=batched, timeout=60) as client:
            got = [_key(e) for e in client.find(EventFilter())]
    except TheiaError as exc:
        if not collector.alive:
            return "crash", f"exit status {collector.returncode}"
        text = str(exc)
        if "chunk 2 of the event store is damaged" in text and "events from" in text:
            return "refused", text
        return "other", text
    if not collector.alive:
        return "crash", f"exit status {collector.returncode}"
    if got == expected:
        return "exact", ""
    if len(got) < len(expected) and all(k in set(expected) for k in got):
        return "short", f"{len(got)} of {len(expected)}"
    return "altered", f"{len(got)} events, {sum(1 for a, b in zip(got, expected) if a != b)} differ"


def run(*, events: int = 65_536, tries: int = 400, every: bool = False, seed: int = 7, log: Any = print) -> dict[str, Any]:
    from theia_frames.cli import main as cli

    work = Path(tempfile.mkdtemp(prefix="proof-damaged-"))
    path = work / "events.db"
    expected = _build(path, events)
    size = len(_get(path, "data"))
    runs = len(_get(path, "arrivals"))
    offsets = list(range(size)) if every else sorted(random.Random(seed).sample(range(size), min(tries, size)))
    plan: list[tuple[str, int]] = [("data", o) for o in offsets]
    plan += [("arrivals", o) for o in range(runs)]
    plan += [(column, 1) for column in ("min_ts", "max_ts", "rows", "bytes")]
    log(f"store: 3 chunks, {len(expected):,} events; the middle chunk: {events:,} events, {size:,} bytes of Arrow data, "
        f"{runs} bytes of arrival numbers; {len(plan)} tries, each a batched and a plain find")
    counts: dict[str, Counter[str]] = {"batched": Counter(), "plain": Counter()}
    examples: dict[str, str] = {}
    started = time.monotonic()
    collector = CollectorProcess(path, log=work / "collector.log").start()
    try:
        for i, (column, offset) in enumerate(plan, 1):
            old = _get(path, column)
            _set(path, column, _flipped(old, offset))
            try:
                for name, batched in (("batched", True), ("plain", False)):
                    kind, why = _find(collector.url, batched, expected, collector)
                    counts[name][kind] += 1
                    examples.setdefault(f"{name} {kind}", f"{column}@{offset}: {why}"[:300])
                    if kind == "crash":
                        collector = CollectorProcess(path, log=work / "collector.log").start()
            finally:
                _set(path, column, old)
            if i % 100 == 0:
                log(f"  {i:,} of {len(plan):,} tries, {time.monotonic() - started:.0f} s")
        for name, batched in (("batched", True), ("plain", False)):
            kind, why = _find(collector.url, batched, expected, collector)
            assert kind == "exact", f"restored store not served in full ({name}): {kind} {why}"
    finally:
        collector.stop()
    seconds = time.monotonic() - started
    # check and salvage on a copy with the middle chunk damaged
    damaged = work / "damaged.db"
    shutil.copyfile(path, damaged)
    data = _get(damaged, "data")
    _set(damaged, "data", _flipped(data, len(data) // 3))
    clean = cli(["check", "--db", str(path)])
    found = cli(["check", "--db", str(damaged), "--salvage", str(work / "salvaged.db")])
    from theia_frames.server.store import EventStore

    with EventStore(work / "salvaged.db") as store:
        salvaged = store.count()
    result = {"counts": counts, "examples": examples, "seconds": seconds, "tries": len(plan),
              "check_clean": clean, "check_damaged": found, "salvaged": salvaged,
              "expected_salvaged": len(expected) - events}
    shutil.rmtree(work, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=65_536, help="events of the chunk damaged (default 65,536: a full chunk)")
    parser.add_argument("--tries", type=int, default=400, help="random offsets of its Arrow data (default 400)")
    parser.add_argument("--every", action="store_true", help="every offset of its Arrow data instead")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    import pyarrow

    print(f"{datetime.date.today()} {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"pyarrow {pyarrow.__version__}, SQLite {sqlite3.sqlite_version}")
    result = run(events=args.events, tries=args.tries, every=args.every, seed=args.seed)
    bad = 0
    for name, counts in result["counts"].items():
        print(f"{name} find: " + ", ".join(f"{kind} {counts[kind]}" for kind in KINDS))
        bad += counts["altered"] + counts["short"] + counts["crash"]
    for key, text in sorted(result["examples"].items()):
        print(f"  e.g. {key}: {text}")
    print(f"{result['tries']} tries in {result['seconds']:.0f} s")
    print(f"check on the intact store: exit {result['check_clean']}; on a damaged copy: exit {result['check_damaged']}; "
          f"salvaged {result['salvaged']:,} of {result['expected_salvaged']:,} intact events")
    if result["check_clean"] != 0 or result["check_damaged"] != 1 or result["salvaged"] != result["expected_salvaged"]:
        bad += 1
    print("ok" if not bad else f"FAILED: {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
