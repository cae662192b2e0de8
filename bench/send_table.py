"""The client's side of ``bench/run.py``'s case (t), in one process and without a network:
what ``send_many`` does with one table of the realistic workload (comma tags, plain-text
sources, as users' tables hold them) before and while it writes to the socket, in CPU
seconds (best of ``--repeat``).

    python bench/send_table.py --n 10000000
    python bench/send_table.py --n 10000000 --batch-size 100000        # Client(url, batch_size=100_000)
    PYTHONPATH=<other tree> python bench/send_table.py --n 10000000    # a before/after, alternating

Two steps, as ``Client.send_many`` takes them:

1. ``prepare``: the table read as events (``to_event_table``: tags split, sources
   dictionary-encoded), all of it before anything is sent;
2. ``messages``: the Arrow messages made of it (``arrow_pieces`` and ``batch_messages``,
   what goes to the socket), one after the other as they are sent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000_000, help="events in the table")
    ap.add_argument("--batch-size", type=int, help="the client's batch_size (default: its default, 10,000)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", help="write the figures to this file too")
    args = ap.parse_args(argv)

    import pyarrow as pa

    from theia_frames.client.options import DEFAULT_BATCH_SIZE, events_to_send
    from theia_frames.protocol.outgoing import arrow_pieces, batch_messages

    table = pa.concat_tables(list(run.realistic_tables(args.n, comma_tags=True))).combine_chunks()
    best: dict[str, float] = {}
    sent: dict[str, int] = {}
    for _ in range(args.repeat):
        c0 = time.process_time()
        events = events_to_send(table, None, None, None)
        c1 = time.process_time()
        messages = rows = size = 0
        for piece in arrow_pieces(events, args.batch_size or DEFAULT_BATCH_SIZE):
            for message in batch_messages(piece, True):
                messages += 1
                size += len(message)
            rows += piece.num_rows
        c2 = time.process_time()
        assert rows == args.n, (rows, args.n)
        for step, seconds in (("prepare", c1 - c0), ("messages", c2 - c1)):
            best[step] = min(best.get(step, seconds), seconds)
        sent = {"messages": messages, "bytes": size}
        del events
    rows_out: list[dict[str, Any]] = [
        {"step": step, "cpu_seconds": round(seconds, 3), "events": args.n, **(sent if step == "messages" else {})}
        for step, seconds in best.items()
    ]
    for row in rows_out:
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"events": args.n, "rows": rows_out}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
