"""Storing events with the identity rule: 400,000 sensor events in 40 batches of 10,000
into a file store, then the last 100,000 sent again (every one an exact repeat, told apart
from copies with other content). Pass the root of the tree to measure, to compare two trees
in one run (e.g. one exported with ``git archive``):

    python bench/store_identity.py /tmp/old    # the tree before
    python bench/store_identity.py .           # this tree
"""
import sys, time, statistics, tempfile, os
root = sys.argv[1]
sys.path.insert(0, root)
import theia_frames
assert theia_frames.__file__.startswith(root), theia_frames.__file__
from theia_frames.server.store import EventStore
from theia_frames.simulation import sensor_events
from theia_frames.protocol.arrow import events_to_batch
evs = list(sensor_events(400_000, sources=4, rate=10_000, start=1.7e9, seed=1))
batches = [events_to_batch(evs[i:i+10_000]) for i in range(0, len(evs), 10_000)]
times = []
for r in range(3):
    d = tempfile.mkdtemp()
    with EventStore(os.path.join(d, "e.db")) as s:
        t = time.perf_counter()
        for b in batches:
            s.add_batch(b, validated=True)
        t1 = time.perf_counter()
        # resend the last 10 batches (all repeats)
        for b in batches[-10:]:
            s.add_batch(b, validated=True)
        times.append((t1 - t, time.perf_counter() - t1))
print(root, "new events median %.3f s, 100k repeats median %.3f s" % (statistics.median(a for a, _ in times), statistics.median(b for _, b in times)))
