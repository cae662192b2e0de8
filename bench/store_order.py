"""What keeping events of one timestamp in arrival order costs the store, and what a frame's
categories cost the conversion: the paths they touch, timed in one process (best of ``--repeat``).

    python bench/store_order.py                       # this tree
    PYTHONPATH=/tmp/old python bench/store_order.py   # an older checkout, for before/after

Through the store's and the converter's own API (``EventStore.add_batch``,
``query_batches``, ``batches_to_dataframe``), so the same script measures older trees.
Cases:

- one large write: 1,000,000 sensor-like events as 4 batches of 250,000 (sorted, no ties);
- small writes, merged: 3,000 writes of 5 events of one timestamp each (every write a tier-0
  chunk, merged by tiers: arrival numbers read and written at each merge);
- overlapping chunks read: 8 chunks of 50,000 events whose time ranges interleave, with
  3 events per timestamp, read asc and desc (merged while read, by timestamp then arrival);
- the conversion: 1,000,000 events in batches whose source dictionaries hold 400 entries,
  4 of them used (the frame's categories are the 4);
- bytes per event of a file store holding the bench's 1,000,000-event workload (``bench/run.py``,
  written as 4 batches), and of 20,000 events written 10 at a time by two writers whose
  time ranges overlap (chunk data; arrival numbers, where the tree keeps them).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def sensor_batch(n: int, t0: float, step: float, seed: int, *, sources: int = 4, entries: int | None = None,
                 ties: int = 1) -> pa.RecordBatch:
    from theia_frames.protocol.arrow import event_schema

    rng = np.random.default_rng(seed)
    ts = t0 + (np.arange(n) // ties) * step
    names = [f"/dev/sensors/s-{i}" for i in range(entries or sources)]
    idx = rng.integers(0, sources, n).astype(np.int32)
    return pa.record_batch(
        [
            pa.array([f"{seed}-{i:08x}-{r:x}" for i, r in enumerate(rng.integers(1 << 30, size=n))]),
            pa.array(ts),
            pa.DictionaryArray.from_arrays(pa.array(idx), pa.array(names)),
            pa.array([["sensor", "temp"]] * n, pa.list_(pa.string())),
            pa.array([f"{20 + i % 9}.5C" for i in range(n)]),
        ],
        schema=event_schema(),
    )


def best(f: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def store_bytes(path: str, n: int) -> str:
    con = sqlite3.connect(path)
    try:
        columns = [row[1] for row in con.execute("PRAGMA table_info(chunks)")]
        data, chunks = con.execute("SELECT sum(length(data)), count(*) FROM chunks").fetchone()
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "chunk_columns" in tables:  # format 8: the columns of chunks stored in parts
            data += con.execute("SELECT coalesce(sum(length(data)), 0) FROM chunk_columns").fetchone()[0]
        arrivals = con.execute("SELECT sum(length(arrivals)) FROM chunks").fetchone()[0] if "arrivals" in columns else 0
    finally:
        con.close()
    return f"{chunks} chunks, data {data / n:.2f} bytes/event, arrival numbers {arrivals} bytes ({arrivals / n:.4f} bytes/event)"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()

    import theia_frames as tf
    from theia_frames.frames.convert import batches_to_dataframe
    from theia_frames.server.store import EventStore

    import run as bench

    big = [sensor_batch(250_000, 1.7e9 + k * 250, 0.001, k) for k in range(4)]
    small = [sensor_batch(5, 1.7e9, 0.0, 100 + k) for k in range(50)]
    overlapping = EventStore()
    for k in range(8):
        overlapping.add_batch(sensor_batch(50_000, 1.7e9 + k * 0.0005, 0.004, 200 + k, ties=3), compact=False)
    converted = [sensor_batch(100_000, 1.7e9 + k * 100, 0.001, 300 + k, entries=400) for k in range(10)]

    def one_large_write() -> None:
        with EventStore() as s:
            for b in big:
                s.add_batch(b)

    def small_writes() -> None:
        with EventStore() as s:
            for k in range(3000):
                piece = small[k % len(small)]
                s.add_batch(piece.set_column(1, "timestamp", pa.array(np.full(5, 1.7e9 + k // 3))))

    print(tf.__file__)
    cases: list[tuple[str, Callable[[], Any]]] = [
        ("one large write, 1M events", one_large_write),
        ("small writes (3,000 x 5 events), merged", small_writes),
        ("8 overlapping chunks of 50k read, asc", lambda: list(overlapping.query_batches(tf.Filter(), batch_size=100_000))),
        ("the same, desc", lambda: list(overlapping.query_batches(tf.Filter().order_desc(), batch_size=100_000))),
        ("batches_to_dataframe, 1M events, 4 of 400 sources", lambda: batches_to_dataframe(converted)),
    ]
    for name, f in cases:
        print(f"{name}: {best(f, args.repeat):.3f} s")

    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "workload.db")
    with EventStore(path) as s:
        for b in bench.workload_batches(1_000_000):
            s.add_batch(b)
    print(f"the bench workload (1M events): {store_bytes(path, 1_000_000)}")
    path = os.path.join(folder, "writers.db")
    with EventStore(path) as s:
        a = bench.workload_batches(10_000)
        first = next(iter(a))
        for at in range(0, 10_000, 10):
            # two writers 0.5 s apart whose writes interleave in time
            s.add_batch(first.slice(at, 10))
            shifted = first.slice(at, 10)
            ts = pa.compute.add(shifted.column(1), 0.5)
            ids = pa.compute.binary_join_element_wise(shifted.column(0), pa.scalar("-b"), "")
            s.add_batch(shifted.set_column(1, "timestamp", ts).set_column(0, "id", ids))
    print(f"two interleaved writers (20,000 events, 10 a write): {store_bytes(path, 20_000)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
