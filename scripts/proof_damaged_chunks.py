"""Proof: a damaged stored chunk is never served as data, and never crashes the collector.

    python scripts/proof_damaged_chunks.py                   # 400 offsets of a 65,536-event chunk
    python scripts/proof_damaged_chunks.py --events 5000 --tries 50
    python scripts/proof_damaged_chunks.py --every            # every offset of the chunk

A store file holds three chunks (10,000 events, ``--events`` events, 10,000 events). The
collector runs in its own process (``theia-frames serve``) on it, so a crash is seen as one.
For each try one byte of the middle chunk is flipped in the SQLite file (its Arrow data at a
random offset, in whichever part holds it when the chunk is stored in parts, every offset of its arrival numbers, each of its index entries), then the
client's default batched find and a plain find (``Client(url, batch=False)``) of all events
run, and a count of the events whose content holds ``5`` by source (``client.count``: on our
collector it reads the chunks' timestamp, source and content columns, from their parts when the
chunk is stored in parts), and the byte is put back. Each find and count is classed:

- ``exact``: every stored event, unchanged, in order (a count: the right count per source);
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


# A cell of the store file: (table, key column, key, column).
Cell = tuple[str, str, int, str]


def _set(path: Path, cell: Cell, value: Any) -> None:
    table, key_column, key, column = cell
    db = sqlite3.connect(path)
    try:
        db.execute(f"UPDATE {table} SET {column} = ? WHERE {key_column} = ?", (value, key))
        db.commit()
    finally:
        db.close()


def _get(path: Path, cell: Cell) -> Any:
    table, key_column, key, column = cell
    db = sqlite3.connect(path)
    try:
        return db.execute(f"SELECT {column} FROM {table} WHERE {key_column} = ?", (key,)).fetchone()[0]
    finally:
        db.close()


def _data_cells(path: Path) -> list[tuple[Cell, int]]:
    """Where the middle chunk's Arrow data is stored, in stream order, and how many bytes each holds:
    ``chunks.data`` alone, or its headers and a row of ``chunk_columns`` per column (format 8)."""
    db = sqlite3.connect(path)
    try:
        columns = [row[1] for row in db.execute("PRAGMA table_info(chunks)")]
        parts = "parts" in columns and db.execute("SELECT parts FROM chunks WHERE seq = 2").fetchone()[0] is not None
        cells: list[tuple[Cell, int]] = [(("chunks", "seq", 2, "data"), len(db.execute("SELECT data FROM chunks WHERE seq = 2").fetchone()[0]))]
        if parts:
            for key, length in db.execute("SELECT key, length(data) FROM chunk_columns WHERE key >= 16 AND key < 24 ORDER BY key"):
                cells.append((("chunk_columns", "key", key, "data"), length))
    finally:
        db.close()
    return cells


def _at(cells: list[tuple[Cell, int]], offset: int) -> tuple[Cell, int]:
    """The cell and offset in it of byte ``offset`` of the chunk's Arrow data."""
    for cell, length in cells:
        if offset < length:
            return cell, offset
        offset -= length
    raise IndexError(offset)


def _flipped(value: Any, offset: int) -> Any:
    if isinstance(value, bytes):
        data = bytearray(value)
        data[offset] ^= 0x5A
        return bytes(data)
    if isinstance(value, float):
        return value + (1e-3 if offset % 2 else -1e-3)
    return value + (1 if offset % 2 else -1)


def _asked(ask: Any, collector: CollectorProcess) -> tuple[str, str, Any]:
    """``ask()``'s answer, or how it failed: ("crash" | "refused" | "other", why, None); ("", "", answer) when it answered."""
    from theia_frames.exceptions import TheiaError

    try:
        answer = ask()
    except TheiaError as exc:
        if not collector.alive:
            return "crash", f"exit status {collector.returncode}", None
        text = str(exc)
        if "chunk 2 of the event store is damaged" in text and "events from" in text:
            return "refused", text, None
        return "other", text, None
    if not collector.alive:
        return "crash", f"exit status {collector.returncode}", None
    return "", "", answer


def _find(url: str, batched: bool, expected: list[tuple[Any, ...]], collector: CollectorProcess) -> tuple[str, str]:
    from theia_frames import Client, EventFilter

    def ask() -> list[tuple[Any, ...]]:
        with Client(url, batch=batched, timeout=60) as client:
            return [_key(e) for e in client.find(EventFilter())]

    kind, why, got = _asked(ask, collector)
    if kind:
        return kind, why
    if got == expected:
        return "exact", ""
    if len(got) < len(expected) and all(k in set(expected) for k in got):
        return "short", f"{len(got)} of {len(expected)}"
    return "altered", f"{len(got)} events, {sum(1 for a, b in zip(got, expected) if a != b)} differ"


def _count(url: str, expected: list[tuple[Any, ...]], collector: CollectorProcess) -> tuple[str, str]:
    from theia_frames import Client, EventFilter

    want: Counter[str] = Counter(k[2] for k in expected if "5" in k[4])

    def ask() -> dict[str, int]:
        with Client(url, timeout=60) as client:
            frame = client.count(EventFilter(start=1, content="5"), by="source")
        return {str(k): int(v) for k, v in frame["count"].items() if int(v)}

    kind, why, got = _asked(ask, collector)
    if kind:
        return kind, why
    if got == dict(want):
        return "exact", ""
    return ("short" if sum(got.values()) < sum(want.values()) else "altered"), f"{got} against {dict(want)}"


def run(*, events: int = 65_536, tries: int = 400, every: bool = False, seed: int = 7, log: Any = print) -> dict[str, Any]:
    from theia_frames.cli import main as cli

    work = Path(tempfile.mkdtemp(prefix="proof-damaged-"))
    path = work / "events.db"
    expected = _build(path, events)
    cells = _data_cells(path)
    size = sum(length for _, length in cells)
    runs = len(_get(path, ("chunks", "seq", 2, "arrivals")))
    offsets = list(range(size)) if every else sorted(random.Random(seed).sample(range(size), min(tries, size)))
    plan: list[tuple[Cell, int]] = [_at(cells, o) for o in offsets]
    plan += [(("chunks", "seq", 2, "arrivals"), o) for o in range(runs)]
    plan += [(("chunks", "seq", 2, column), 1) for column in ("min_ts", "max_ts", "rows", "bytes")]
    if len(cells) > 1:
        plan += [(("chunks", "seq", 2, "parts"), o) for o in range(0, 8 * len(cells), 3)]
    log(f"store: 3 chunks, {len(expected):,} events; the middle chunk: {events:,} events, {size:,} bytes of Arrow data "
        f"in {len(cells)} part(s), {runs} bytes of arrival numbers; {len(plan)} tries, each a batched and a plain find")
    counts: dict[str, Counter[str]] = {"batched": Counter(), "plain": Counter(), "count": Counter()}
    examples: dict[str, str] = {}
    started = time.monotonic()
    collector = CollectorProcess(path, log=work / "collector.log").start()
    try:
        for i, (cell, offset) in enumerate(plan, 1):
            column = f"{cell[0]}.{cell[3]} {cell[2]}"
            old = _get(path, cell)
            _set(path, cell, _flipped(old, offset))
            try:
                for name, batched in (("batched", True), ("plain", False)):
                    kind, why = _find(collector.url, batched, expected, collector)
                    counts[name][kind] += 1
                    examples.setdefault(f"{name} {kind}", f"{column}@{offset}: {why}"[:300])
                    if kind == "crash":
                        collector = CollectorProcess(path, log=work / "collector.log").start()
                kind, why = _count(collector.url, expected, collector)
                counts["count"][kind] += 1
                examples.setdefault(f"count {kind}", f"{column}@{offset}: {why}"[:300])
                if kind == "crash":
                    collector = CollectorProcess(path, log=work / "collector.log").start()
            finally:
                _set(path, cell, old)
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
    cell, offset = _at(cells, size // 3)
    _set(damaged, cell, _flipped(_get(damaged, cell), offset))
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
        print(f"{name}{'' if name == 'count' else ' find'}: " + ", ".join(f"{kind} {counts[kind]}" for kind in KINDS))
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
