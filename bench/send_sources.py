"""send_many of Arrow data with many distinct sources: messages, bytes and speed.

    python bench/send_sources.py                      # 400,000 and 1,000,000 distinct sources
    python bench/send_sources.py --sources 400000 --repeat 5

Two measures, each in this process:

1. end to end: ``send_many(table, wait=True)`` of a table whose every row has
   its own source, into an embedded collector with its default limits
   (16 MiB per message); the messages the client wrote are counted and
   sized at the connection (``Connection.send_binaries``);
2. the client's side alone, without a network: the Arrow messages
   ``arrow_pieces`` and ``batch_to_ipc`` make of the table and of the
   1,000,000-event workload of ``bench/run.py`` (few sources), ``--repeat``
   times, the median reported.

To compare two trees, run the script of one tree with the other's package
first on the path (``PYTHONPATH=<other tree>``), alternating.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

import theia_frames
from theia_frames import Client, serve
from theia_frames.client.transport import Connection
from theia_frames.protocol.arrow import batch_to_ipc, event_schema
from theia_frames.protocol.outgoing import arrow_pieces

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import workload_batches  # noqa: E402


def sources_table(n: int) -> pa.Table:
    """``n`` events, each with a source of its own (a dictionary of ``n`` entries)."""
    return pa.table(
        {
            "id": pa.array([f"e{i}" for i in range(n)]),
            "timestamp": 1.7e9 + np.arange(n) * 0.001,
            "source": pa.array([f"/dev/sensor/{i:07d}" for i in range(n)]).dictionary_encode(),
            "tags": pa.array([["t"]] * n, pa.list_(pa.string())),
            "content": pa.array(["21.5C"] * n),
        },
        schema=event_schema(),
    )


def end_to_end(table: pa.Table) -> dict[str, Any]:
    sizes: list[int] = []
    send = Connection.send_binaries

    def counting(self: Connection, payloads: Any) -> None:
        sizes.extend(len(p) for p in payloads)
        send(self, payloads)

    Connection.send_binaries = counting  # type: ignore[method-assign]
    try:
        with serve(db=":memory:", port=0) as collector:
            t0 = time.perf_counter()
            try:
                with Client(collector.url) as client:
                    outcome: Any = client.send_many(table, wait=True)
            except theia_frames.TheiaError as exc:
                outcome = f"{type(exc).__name__}: {str(exc)[:90]}"
            seconds = time.perf_counter() - t0
            assert collector.store is not None  # running
            stored = collector.store.count()
    finally:
        Connection.send_binaries = send  # type: ignore[method-assign]
    return {"result": outcome, "stored": stored, "messages": len(sizes), "largest": max(sizes, default=0),
            "bytes": sum(sizes), "seconds": seconds}


def client_side(table: pa.Table, repeat: int) -> tuple[float, int]:
    times = []
    total = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        total = sum(len(batch_to_ipc(b)) for b in arrow_pieces(table, 10_000))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sources", type=int, nargs="+", default=[400_000, 1_000_000], help="distinct sources (= events)")
    p.add_argument("--repeat", type=int, default=5, help="runs of the client-side measure (median)")
    args = p.parse_args(argv)
    print(f"theia_frames from {Path(theia_frames.__file__).parent}")
    for n in args.sources:
        table = sources_table(n)
        r = end_to_end(table)
        print(f"{n:>9,} sources  send_many: {r['result']}; stored {r['stored']:,}; {r['messages']} messages, "
              f"largest {r['largest'] / 1e6:.2f} MB, {r['bytes'] / 1e6:.1f} MB in all, {r['seconds']:.2f} s")
        seconds, total = client_side(table, args.repeat)
        print(f"{n:>9,} sources  client side: {seconds:.3f} s ({n / seconds:,.0f} events/s), {total / 1e6:.1f} MB of messages")
    workload = pa.Table.from_batches(list(workload_batches(1_000_000)))
    seconds, total = client_side(workload, args.repeat)
    print(f"bench/run.py workload (1,000,000 events) client side: {seconds:.3f} s "
          f"({workload.num_rows / seconds:,.0f} events/s), {total / 1e6:.1f} MB of messages")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
