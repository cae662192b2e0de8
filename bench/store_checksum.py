"""What the chunks' checksums cost a find: 1M sensor events in a file store (20 chunks of
50,000), a find of all of them read from the store (stored IPC messages, as a batched /find
sends them; record batches, as a plain /find encodes them) with the checksum checked and,
as the baseline in the same run, with the check taken out; and CRC-32 over every chunk alone.

    python bench/store_checksum.py
"""
import sqlite3, tempfile, time, os, zlib, statistics
from theia_frames.server.store import EventStore
from theia_frames.server import chunks
from theia_frames.simulation import sensor_events
from theia_frames import Filter
from theia_frames.protocol.arrow import events_to_batch
d = tempfile.mkdtemp(); p = os.path.join(d, "e.db")
evs = list(sensor_events(1_000_000, sources=4, rate=10_000, start=1.7e9, seed=1))
with EventStore(p) as s:
    for i in range(0, len(evs), 100_000):
        s.add_batch(events_to_batch(evs[i:i+100_000]))
db = sqlite3.connect(p)
blobs = [(chunks.read_stream(db, seq, head, parts), *rest) for seq, head, parts, *rest in
         db.execute("SELECT seq, data, parts, bytes, arrivals, min_ts, max_ts, rows FROM chunks").fetchall()]
print("chunks", len(blobs), "bytes", sum(len(b[0]) for b in blobs))
def crc():
    t = time.perf_counter()
    for b in blobs: chunks.chunk_checksum(*b)
    return time.perf_counter() - t
real = chunks.checked_blob
def nocheck(seq, data, nbytes, arrivals, *rest):
    return chunks.Blob(seq, data, nbytes, arrivals)
def find(check, kind):
    import theia_frames.server.store as st
    st.checked_blob = real if check else nocheck
    with EventStore(p) as s:
        t = time.perf_counter()
        if kind == "ipc":
            n = sum(len(m) for m in s.query_ipc(Filter(1)))
        else:
            n = sum(b.num_rows for b in s.query_batches(Filter(1)))
        return time.perf_counter() - t
for kind in ("ipc", "batches"):
    a, b = [], []
    for _ in range(5):
        a.append(find(True, kind)); b.append(find(False, kind))
    print(kind, "with checksum median %.4f s, without %.4f s, ratio %.3f" % (statistics.median(a), statistics.median(b), statistics.median(a)/statistics.median(b)))
print("crc32 of all chunks: median %.4f s" % statistics.median([crc() for _ in range(5)]))
