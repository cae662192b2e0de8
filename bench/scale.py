"""Past one machine: to_dask on a LocalCluster against to_dataframe, at sizes no test can run.

    python bench/scale.py                          # 10,000,000 events in one collector; 2 x 5,000,000 merged
    python bench/scale.py --events 200000 --merged 100000     # a quick smoke run

Each collector (``theia-frames serve``) runs in a process of its own on an
SQLite store made once (kept in ``--data``, reused by later runs of the same
size). Each case runs in a fresh child process, so that the peak RSS it reports
(``ru_maxrss``) is its own; a Dask case's workers are the processes of a
``LocalCluster`` started in that child, and report their own peaks.

Cases:
  frame     to_dataframe(find(url, Filter(0))): one process, one connection
  dask      to_dask(url).map_partitions(len).compute() on a LocalCluster of
            --workers worker processes (1 thread each)
  merged    to_dask([url1, url2]) of two collectors, the same on the cluster
  frames2   to_dataframe of each of the two collectors, concatenated and
            de-duplicated by (timestamp, id): the one-process answer to merged

Printed: seconds, the driver's idle and peak RSS, each worker's peak RSS,
and the per-partition fetch times (from the cluster's task stream), which say
how the time would scale with more workers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
T0 = 1_700_000_000.0
SOURCES = ["/dev/sensors/temp-1", "/dev/sensors/humidity-2", "/dev/sensors/pressure-3", "/dev/sensors/co2-4"]
CONTENTS = ["21.5C", "48%", "1013.2 hPa", "612 ppm"]
TAGS = ["sensor,temp", "sensor,humidity", "sensor,pressure", "sensor,co2"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _mib(kib: int) -> float:
    return kib / 1024.0  # ru_maxrss is KiB on Linux


# --------------------------------------------------------------------------- stores


def make_store(path: Path, n: int, *, step: float, offset: float, stride: int, first: int) -> None:
    """``n`` sensor-like events, ``step`` seconds apart from ``T0 + offset``, ids from ``first`` by ``stride``."""
    import numpy as np
    import pyarrow as pa

    from theia_frames.protocol.arrow import event_schema
    from theia_frames.server.store import EventStore

    tmp = path.with_suffix(".part")
    for leftover in (tmp, Path(str(tmp) + "-wal"), Path(str(tmp) + "-shm")):
        leftover.unlink(missing_ok=True)
    sources, contents, tags = (np.array(v, dtype=object) for v in (SOURCES, CONTENTS, TAGS))
    piece = 1_000_000
    with EventStore(tmp) as store:
        for lo in range(0, n, piece):
            i = np.arange(lo, min(n, lo + piece))
            k = first + i * stride
            batch = pa.RecordBatch.from_arrays(
                [
                    pa.array([f"{x:08x}-0000-4000-8000-{x:012x}" for x in k.tolist()], pa.string()),
                    pa.array(T0 + offset + i * step, pa.float64()),
                    pa.array(sources[k % 4], pa.string()),
                    pa.array(tags[k % 4], pa.string()),
                    pa.array(contents[k % 4], pa.string()),
                ],
                names=list(event_schema().names),  # sources and tags as text: the store reads them
            )
            store.add_batch(batch, compact=False)
        assert store.count() == n, store.count()
    os.replace(tmp, path)


def ensure_store(data: Path, name: str, n: int, **layout: Any) -> Path:
    path = data / f"{name}-{n}.db"
    if not path.exists():
        t = time.perf_counter()
        code = (
            "import sys; sys.path.insert(0, sys.argv[1]); from scale import make_store; from pathlib import Path; "
            f"make_store(Path(sys.argv[2]), {n}, **{layout!r})"
        )
        subprocess.run([sys.executable, "-c", code, str(HERE), str(path)], check=True, env=_env())
        print(f"made {path} ({n:,} events) in {time.perf_counter() - t:.1f} s", flush=True)
    return path


class Served:
    """``theia-frames serve`` on a store, in a process of its own."""

    def __init__(self, db: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "theia_frames", "serve", "--db", str(db), "--port", "0", "--log-level", "error"],
            stdout=subprocess.PIPE, text=True, env=_env(), cwd=ROOT,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        m = re.search(r"(ws://\S+)", line)
        if not m:
            self.proc.kill()
            raise SystemExit(f"the collector did not start: {line!r}")
        self.url = m.group(1)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# --------------------------------------------------------------------------- cases (child processes)


def _rss_now() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def case_frame(urls: list[str], args: argparse.Namespace) -> dict[str, Any]:
    import pandas as pd

    import theia_frames as tf

    idle = _rss_now()
    t = time.perf_counter()
    frames = [tf.to_dataframe(tf.find(u, tf.Filter(0), timeout=600), progress=False) for u in urls]
    df = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    if len(frames) > 1:
        df = df.drop_duplicates(["timestamp", "id"]).sort_values(["timestamp", "id"], ignore_index=True)
    seconds = time.perf_counter() - t
    return {"rows": len(df), "seconds": seconds, "driver_idle_mib": idle, "driver_peak_mib": _mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)}


def case_dask(urls: list[str], args: argparse.Namespace) -> dict[str, Any]:
    import distributed

    import theia_frames as tf

    t = time.perf_counter()
    cluster = distributed.LocalCluster(
        n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None,
        silence_logs=40, memory_limit=0,
    )
    client = distributed.Client(cluster)
    startup = time.perf_counter() - t
    try:
        import dask.dataframe  # noqa: F401  (imported before the idle size is taken)

        idle = _rss_now()
        t = time.perf_counter()
        ddf = tf.to_dask(urls if len(urls) > 1 else urls[0], partition_events=args.partition_events,
                         source_options={"timeout": 600})
        built = time.perf_counter() - t
        with distributed.get_task_stream(client) as stream:
            sizes = ddf.map_partitions(len).compute()
        seconds = time.perf_counter() - t
        fetch = [
            (s["stop"] - s["start"])
            for task in stream.data if "theia-events" in str(task.get("key", ""))
            for s in task.get("startstops", ()) if s.get("action") == "compute"
        ]
        workers = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        return {
            "rows": int(sizes.sum()), "partitions": int(ddf.npartitions), "seconds": seconds, "graph_seconds": built,
            "cluster_startup_seconds": startup, "driver_idle_mib": idle,
            "driver_peak_mib": _mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
            "worker_peak_mib": sorted(_mib(v) for v in workers.values()),
            "partition_seconds": {
                "n": len(fetch), "median": statistics.median(fetch) if fetch else None,
                "max": max(fetch) if fetch else None, "sum": sum(fetch),
            },
            "partition_rows": {"median": float(sizes.median()), "max": int(sizes.max())},
        }
    finally:
        client.close()
        cluster.close()


CASES = {"frame": case_frame, "dask": case_dask}


def run_case(name: str, urls: list[str], args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--workers", str(args.workers),
           "--partition-events", str(args.partition_events), *sum((["--url", u] for u in urls), [])]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=_env(), cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _row(label: str, r: dict[str, Any]) -> str:
    workers = ", ".join(f"{w:,.0f}" for w in r.get("worker_peak_mib", [])) or "-"
    per = r.get("partition_seconds")
    per_text = f"{per['median']:.2f} s median, {per['max']:.2f} s max, {per['sum']:.1f} s total over {per['n']}" if per and per["n"] else "-"
    return (f"| {label} | {r['rows']:,} | {r['seconds']:.1f} | {r['driver_idle_mib']:,.0f} | {r['driver_peak_mib']:,.0f} "
            f"| {workers} | {r.get('partitions', '-')} | {per_text} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=10_000_000, help="events in the one collector (default 10,000,000)")
    p.add_argument("--merged", type=int, default=5_000_000, help="events in each of two collectors (default 5,000,000; 0 skips)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--partition-events", type=int, default=500_000)
    p.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "theia-frames-scale")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--cases", default="frame,dask", help="which of frame,dask to run on the one collector")
    p.add_argument("--merged-cases", default="dask,frame", help="which of dask,frame to run on the two collectors")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--url", action="append", default=[], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(CASES[args.child](args.url, args)))
        return
    args.data.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"events": args.events, "merged": args.merged, "workers": args.workers,
                               "partition_events": args.partition_events, "cpus": os.cpu_count()}
    header = ("| case | events | seconds | driver idle MiB | driver peak MiB | worker peak MiB | partitions | per partition |\n"
              "| --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    if args.events:
        db = ensure_store(args.data, "one", args.events, step=0.001, offset=0.0, stride=1, first=0)
        served = Served(db)
        try:
            for case in args.cases.split(","):
                r = run_case(case, [served.url], args)
                results[f"one-{case}"] = r
                rows.append(_row(f"1 collector: {'to_dataframe' if case == 'frame' else 'to_dask, ' + str(args.workers) + ' workers'}", r))
                print(rows[-1], flush=True)
        finally:
            served.close()
    if args.merged:
        dbs = [ensure_store(args.data, f"half{k}", args.merged, step=0.002, offset=0.001 * k, stride=2, first=k) for k in (0, 1)]
        servers = [Served(db) for db in dbs]
        try:
            urls = [s.url for s in servers]
            labels = {"dask": f"2 collectors merged: to_dask, {args.workers} workers",
                      "frame": "2 collectors: to_dataframe each, concat, de-duplicate"}
            for case in args.merged_cases.split(","):
                label = labels[case]
                r = run_case(case, urls, args)
                results[f"merged-{case}"] = r
                rows.append(_row(label, r))
                print(rows[-1], flush=True)
        finally:
            for s in servers:
                s.close()
    print()
    print(header)
    print("\n".join(rows))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
