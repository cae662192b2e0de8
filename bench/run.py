"""The theia_frames benchmark suite: every case side by side, in one process tree.

    python bench/run.py                 # 1,000,000 events (the recorded figures)
    python bench/run.py --n 20000       # a quick smoke run

A collector (``theia-frames serve``) runs in its own process on a temporary
database; each case runs in a fresh child process so that its peak RSS is its
own. Each timed case is repeated ``--repeat`` times, interleaved, and the
median is reported. Ratios compare cases measured in this same run.

Cases:
  t      the workload loaded into the collector the other cases read: send_many(pyarrow.Table)
         of all events until confirmed
  a      to_dataframe(client.find(f)) end to end, batched transfer
  b      the same over the plain protocol (batching off)
  c      a hand-written baseline: websocket-client loop, per-event parse,
         DataFrame from a list of dicts (plain protocol)
  d      pandas.read_json(lines=True, engine="pyarrow") over the same events in a local file
  e      send_many(list[Event]) until all are stored, at most 1,000,000 events (memory),
         into a collector of its own
  f      live: sustained events/s into a LiveFrame with its widget redrawing,
         and send->visible latency p50/p99
  g      bucket and explode_tags on the frame of all events
  q      the selective queries of queries() -> DataFrame, end to end, this project
  k      the same queries with DuckDB over the same events as a local Parquet file
  o      the same queries -> Polars, this project (to_polars)
  l      the same queries with Polars over the Parquet file (scan_parquet, filter, collect)
  p      theia_frames.read_events() of that Parquet file (all events)
  w      seconds from a /find request to its first message after ``ok``, per query

    python bench/run.py --n 10000000 --cases aqkptw --repeat 2     # the 10M-event mode

Every selective query is also measured as this project -> Polars (``to_polars``,
case ``o``) and as Polars over the Parquet file (``scan_parquet(...).filter(...)
.collect()``, case ``l``).

Workloads (``--workload``):
  realistic  (the default) like users' events: random 32-hex-digit ids (uuid4-like),
             20 sources, timestamps 1 ms apart plus up to 0.5 ms of jitter (whole
             microseconds), tags ``<service>,prod``, 1% of events (at random) also
             tagged ``alarm``, 1% (at random, apart) with an error message as content;
             case (t) sends it as one single-chunk table with the tags as comma text
  simple     ``simulation.sensor_events`` (4 sources, three tags each), every 100th
             event also tagged ``alarm`` with `` alarm`` after its content
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
START = 1_700_000_000.0


# ----------------------------------------------------------------------------- helpers


def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


WORKLOADS = ("realistic", "simple")
WORKLOAD = "realistic"  # set from --workload, in the parent and every child
CHUNK = 250_000  # rows of one generated batch of the realistic workload
SERVICES = ("web", "api", "db", "cache", "queue")
SOURCES = tuple(f"/srv/{SERVICES[i % 5]}-{i // 5 + 1:02d}/app.log" for i in range(20))


def workload(n: int) -> Any:
    """The workload's events, as Event objects (for the cases that send or write those)."""
    from theia_frames import Event

    if WORKLOAD == "realistic":
        for table in realistic_tables(n):
            for row in table.to_pylist():
                yield Event(row["id"], row["timestamp"], row["source"], row["tags"], row["content"])
        return
    from theia_frames import sensor_events

    # a few sources, three tags, numeric content like "21.5C"; 1 ms apart; 1% "alarm"
    for i, e in enumerate(sensor_events(n, sources=4, rate=1000.0, start=START, seed=7)):
        if i % 100 == 50:
            e = Event(e.id, e.timestamp, e.source, [*e.tags, "alarm"], e.content + " alarm")
        yield e


def realistic_tables(n: int, comma_tags: bool = False) -> Any:
    """The realistic workload as pyarrow tables of CHUNK rows (the last fewer), each made
    from its own seed (the same events in every process), columns in the event order
    (id, timestamp, source, tags, content); ``comma_tags`` gives tags and sources as
    users' tables hold them (comma text, plain text)."""
    import binascii

    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    for number, begin in enumerate(range(0, n, CHUNK)):
        m = min(CHUNK, n - begin)
        rng = np.random.default_rng([7, number])
        raw = rng.integers(0, 256, size=16 * m, dtype=np.uint8).tobytes()
        ids = pa.Array.from_buffers(
            pa.string(), m, [None, pa.py_buffer(np.arange(0, 32 * (m + 1), 32, dtype=np.int32)),
                             pa.py_buffer(binascii.hexlify(raw))])
        micros = (np.arange(begin, begin + m, dtype=np.int64) * 1000 + rng.integers(0, 501, size=m)).astype(np.float64)
        timestamps = pa.array(START + micros / 1e6, pa.float64())
        which = rng.integers(0, len(SOURCES), size=m).astype(np.int32)
        rare = rng.random(m) < 0.01
        error = rng.random(m) < 0.01
        service = pa.array(np.array(SERVICES, dtype=object)[which % len(SERVICES)].astype(str))
        tag_text = pc.binary_join_element_wise(service, pa.array(np.where(rare, "prod,alarm", "prod")), ",")
        millis = pa.array(rng.integers(1, 900, size=m)).cast(pa.string())
        user = pa.array(rng.integers(1000, 99999, size=m)).cast(pa.string())
        normal = pc.binary_join_element_wise("request served in ", millis, " ms for user ", user, "")
        failed = pc.binary_join_element_wise("ERROR connection refused by db-", pa.array(which % 7).cast(pa.string()),
                                             " after ", millis, " ms", "")
        content = pc.if_else(pa.array(error), failed, normal)
        if comma_tags:
            source: Any = pa.array(np.array(SOURCES, dtype=object)[which].astype(str))
            tags: Any = tag_text
        else:
            source = pa.DictionaryArray.from_arrays(pa.array(which), pa.array(SOURCES))
            tags = pc.split_pattern(tag_text, ",")
        yield pa.table({"id": ids, "timestamp": timestamps, "source": source, "tags": tags, "content": content})


def arrow_module() -> Any:
    """The extension's Arrow module, wherever the measured tree keeps it (the same bench
    script measures older trees too, for before/after runs)."""
    try:
        from theia_frames.protocol import arrow
    except ImportError:  # a tree from before the package had folders
        from theia_frames import batch as arrow  # type: ignore[attr-defined, no-redef]
    return arrow


def workload_batches(n: int, size: int = 250_000) -> Any:
    """The workload as Arrow record batches of the event schema."""
    import itertools

    if WORKLOAD == "realistic":
        event_schema = arrow_module().event_schema
        for table in realistic_tables(n):
            yield table.cast(event_schema()).combine_chunks().to_batches()[0]
        return
    events_to_batch = arrow_module().events_to_batch

    events = workload(n)
    while batch := list(itertools.islice(events, size)):
        yield events_to_batch(batch)


def query_parts(n: int) -> dict[str, tuple[float | None, float | None, str | None, str | None]]:
    """Each selective query as (start, end, tag, content regex); None where it has none."""
    span = n / 1000.0  # seconds the workload covers
    lo = START + 0.5 * span
    hi = lo + 0.01 * span - 0.0005
    regex = r"ERROR connection refused by db-\d+" if WORKLOAD == "realistic" else r"\d[a-zA-Z%]+ alarm"
    common = "prod" if WORKLOAD == "realistic" else "sensor"
    return {
        "all": (None, None, None, None),
        "time 1%": (lo, hi, None, None),
        "tag 1%": (None, None, "alarm", None),
        "content regex 1%": (None, None, None, regex),
        "tag + time": (lo, hi, "alarm", None),
        "tag all carry": (None, None, common, None),
    }


def queries(n: int) -> dict[str, tuple[dict[str, Any], str]]:
    """Each selective query: its filter (JSON form) and the same as a DuckDB WHERE clause."""
    out: dict[str, tuple[dict[str, Any], str]] = {}
    for name, (lo, hi, tag, regex) in query_parts(n).items():
        flt: dict[str, Any] = {"start": START - 1 if lo is None else lo}
        where = []
        if tag is not None:
            flt["tags"] = [tag]
            where.append(f"list_contains(tags, '{tag}')")
        if lo is not None:
            flt["end"] = hi
            where.append(f"timestamp >= to_timestamp({lo}) AND timestamp <= to_timestamp({hi})")
        if regex is not None:
            flt["content"] = regex
            where.append(f"regexp_matches(content, '{regex}')")
        out[name] = (flt, " AND ".join(where) or "TRUE")
    return out


def polars_query(n: int, name: str) -> Any:
    """The same query as a Polars expression over the Parquet file's columns."""
    from datetime import datetime, timezone

    import polars as pl

    lo, hi, tag, regex = query_parts(n)[name]
    expr = pl.lit(True)
    if lo is not None and hi is not None:
        expr = expr & pl.col("timestamp").is_between(
            datetime.fromtimestamp(lo, timezone.utc), datetime.fromtimestamp(hi, timezone.utc), closed="both")
    if tag is not None:
        expr = expr & pl.col("tags").list.contains(tag)
    if regex is not None:
        expr = expr & pl.col("content").str.contains(regex)
    return expr


def emit(result: dict[str, Any]) -> None:
    print("RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------- child cases


def case_load(url: str, n: int) -> dict[str, Any]:
    """(e) send_many of n events until all are stored."""
    from theia_frames import Client, Filter
    from theia_frames import to_dataframe

    events = list(workload(min(n, 1_000_000)))  # a list of Event objects: at most 1M (memory)
    n = len(events)
    with Client(url) as client:
        t0 = time.perf_counter()
        client.send_many(events)
        flush = getattr(client, "flush", None)
        if flush is not None:
            flush()
            stored = n
        else:  # no acknowledgements: poll until every event is visible to a find
            stored = 0
            deadline = time.monotonic() + 600
            while stored < n and time.monotonic() < deadline:
                stored = len(to_dataframe(client.find(Filter(START - 1)), columns=["id"], progress=False))
        seconds = time.perf_counter() - t0
    return {"case": "e", "events": stored, "seconds": seconds}


def case_find(url: str, n: int, batch: bool) -> dict[str, Any]:
    """(a)/(b) to_dataframe(client.find(f)) end to end."""
    from theia_frames import Client, Filter
    from theia_frames import to_dataframe

    base = rss_now()
    with Client(url, batch=batch) as client:
        t0 = time.perf_counter()
        df = to_dataframe(client.find(Filter(START - 1)), progress=False)
        seconds = time.perf_counter() - t0
    return {
        "case": "a" if batch else "b",
        "events": len(df),
        "seconds": seconds,
        "rss_peak": rss_peak(),
        "rss_base": base,
        "df_bytes": int(df.memory_usage(deep=True).sum()),
    }


def case_async_find(url: str, n: int) -> dict[str, Any]:
    """(h) await AsyncClient.find(f).to_dataframe() end to end, batched."""
    import asyncio

    from theia_frames import AsyncClient, Filter

    base = rss_now()

    async def run() -> Any:
        async with AsyncClient(url) as client:
            return await client.find(Filter(START - 1)).to_dataframe(progress=False)

    t0 = time.perf_counter()
    df = asyncio.run(run())
    seconds = time.perf_counter() - t0
    return {
        "case": "h",
        "events": len(df),
        "seconds": seconds,
        "rss_peak": rss_peak(),
        "rss_base": base,
        "df_bytes": int(df.memory_usage(deep=True).sum()),
    }


def case_send_table(url: str, n: int) -> dict[str, Any]:
    """(t) send_many(pyarrow.Table) of all events until confirmed."""
    import pyarrow as pa

    from theia_frames import Client

    if WORKLOAD == "realistic":  # one chunk, tags as comma text, sources as plain text
        table = pa.concat_tables(list(realistic_tables(n, comma_tags=True))).combine_chunks()
    else:
        table = pa.Table.from_batches(list(workload_batches(n)))
    with Client(url) as client:
        t0 = time.perf_counter()
        client.send_many(table)
        client.flush()
        seconds = time.perf_counter() - t0
    return {"case": "t", "events": table.num_rows, "seconds": seconds}


def case_query(url: str, n: int, name: str) -> dict[str, Any]:
    """(q) one selective query -> DataFrame, end to end."""
    from theia_frames import Client, EventFilter
    from theia_frames import to_dataframe

    flt = EventFilter.from_dict(queries(n)[name][0])
    base = rss_now()
    with Client(url) as client:
        t0 = time.perf_counter()
        df = to_dataframe(client.find(flt), progress=False)
        seconds = time.perf_counter() - t0
    return {"case": "q", "query": name, "events": len(df), "seconds": seconds, "rss_peak": rss_peak(), "rss_base": base,
            "df_bytes": int(df.memory_usage(deep=True).sum())}


def case_duckdb(path: str, n: int, name: str) -> dict[str, Any]:
    """(k) the same query with DuckDB over a local Parquet file, to a DataFrame."""
    import duckdb

    where = queries(n)[name][1]
    con = duckdb.connect()
    t0 = time.perf_counter()
    df = con.sql(f"SELECT * FROM read_parquet('{path}') WHERE {where} ORDER BY timestamp, id").df()
    seconds = time.perf_counter() - t0
    return {"case": "k", "query": name, "events": len(df), "seconds": seconds}


def case_polars(url: str, n: int, name: str) -> dict[str, Any]:
    """(o) one selective query -> Polars, end to end, this project (to_polars)."""
    from theia_frames import Client, EventFilter
    from theia_frames import to_polars

    import polars  # noqa: F401  (imported before the clock starts, as in case l)

    flt = EventFilter.from_dict(queries(n)[name][0])
    with Client(url) as client:
        t0 = time.perf_counter()
        df = to_polars(client.find(flt), progress=False)
        seconds = time.perf_counter() - t0
    return {"case": "o", "query": name, "events": df.height, "seconds": seconds}


def case_polars_parquet(path: str, n: int, name: str) -> dict[str, Any]:
    """(l) the same query with Polars over the local Parquet file."""
    import polars as pl

    expr = polars_query(n, name)
    t0 = time.perf_counter()
    df = pl.scan_parquet(path).filter(expr).collect()
    seconds = time.perf_counter() - t0
    return {"case": "l", "query": name, "events": df.height, "seconds": seconds}


def case_read_parquet(path: str) -> dict[str, Any]:
    """(p) theia_frames.read_events() of the Parquet file."""
    from theia_frames import read_events

    t0 = time.perf_counter()
    df = read_events(path)
    seconds = time.perf_counter() - t0
    return {"case": "p", "events": len(df), "seconds": seconds}


def case_first_message(url: str, n: int) -> dict[str, Any]:
    """(w) per query, seconds from sending the filter to the first message after ``ok``
    (the extension's ``{"total": N}`` not counted): what a client waits before it hears."""
    import websocket

    SUBPROTOCOL = arrow_module().SUBPROTOCOL

    out: dict[str, float] = {}
    for name, (flt, _) in queries(n).items():
        ws = websocket.create_connection(url + "/find", header=[f"Sec-WebSocket-Protocol: {SUBPROTOCOL}"], timeout=600)
        t0 = time.perf_counter()
        ws.send(json.dumps(flt))
        while True:
            msg = ws.recv()
            if msg == "ok" or (isinstance(msg, str) and msg.startswith('{"total"')):
                continue
            break
        out[name] = time.perf_counter() - t0
        ws.close()
    return {"case": "w", "first_message_seconds": out}


def write_parquet(n: int, path: str) -> None:
    """The workload as a local Parquet file, the way theia_frames writes a frame (write_events)."""
    from theia_frames import write_events

    write_events(workload_batches(n), path, progress=False)


def case_baseline(url: str, n: int) -> dict[str, Any]:
    """(c) what a user writes by hand with websocket-client and pandas."""
    import pandas as pd
    import websocket

    base = rss_now()
    t0 = time.perf_counter()
    ws = websocket.create_connection(url + "/find")
    ws.send(json.dumps({"start": START - 1}))
    rows = []
    while True:
        opcode, msg = ws.recv_data()
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            break
        if msg == b"ok":
            continue
        preamble, _, rest = msg.partition(b"\n")
        _, _, hsize, csize = preamble.decode().replace(":", ": ").split()
        hsize, csize = int(hsize), int(csize)
        header = dict(line.split(":", 1) for line in rest[:hsize].decode().splitlines())
        rows.append(
            {
                "id": header["id"],
                "timestamp": float(header["timestamp"]),
                "source": header["source"],
                "tags": header["tags"].split(",") if header.get("tags") else [],
                "content": rest[hsize : hsize + csize].decode(),
            }
        )
    ws.close()
    df = pd.DataFrame(rows)
    df["timestamp"] = pd.to_datetime(df["timestamp"], unit="s", utc=True)
    seconds = time.perf_counter() - t0
    return {"case": "c", "events": len(df), "seconds": seconds, "rss_peak": rss_peak(), "rss_base": base,
            "df_bytes": int(df.memory_usage(deep=True).sum())}


def case_read_json(path: str) -> dict[str, Any]:
    """(d) pandas.read_json(lines=True, engine="pyarrow") over a local JSON-lines file."""
    import pandas as pd

    base = rss_now()
    t0 = time.perf_counter()
    df = pd.read_json(path, lines=True, engine="pyarrow")
    seconds = time.perf_counter() - t0
    return {"case": "d", "events": len(df), "seconds": seconds, "rss_peak": rss_peak(), "rss_base": base,
            "df_bytes": int(df.memory_usage(deep=True).sum())}


def case_helpers(url: str) -> dict[str, Any]:
    """(g) bucket and explode_tags on the frame of all events."""
    from theia_frames import Client, Filter
    from theia_frames import bucket, explode_tags
    from theia_frames import to_dataframe

    with Client(url) as client:
        df = to_dataframe(client.find(Filter(START - 1)), progress=False)
    t0 = time.perf_counter()
    b = bucket(df, "1min", by="source")
    t_bucket = time.perf_counter() - t0
    t0 = time.perf_counter()
    x = explode_tags(df)
    t_explode = time.perf_counter() - t0
    return {"case": "g", "events": len(df), "bucket_seconds": t_bucket, "bucket_rows": len(b),
            "explode_seconds": t_explode, "explode_rows": len(x)}


def case_live(url: str, rate: float, seconds: float) -> dict[str, Any]:
    """(f) a LiveFrame with its widget redrawing, fed by a sender process at ``rate`` events/s."""
    import numpy as np

    from theia_frames import Filter
    from theia_frames import LiveFrame

    latencies: list[np.ndarray] = []

    def on_batch(df: Any) -> None:
        now = time.time()
        ts = df["timestamp"].to_numpy(dtype="datetime64[ns]").astype("int64") / 1e9
        latencies.append(now - ts)

    lf = LiveFrame(url, Filter(time.time()), max_rows=200_000, on_batch=on_batch)
    with lf:
        view = lf.widget(every=0.5, mode="widget")
        sender = subprocess.Popen(
            [sys.executable, __file__, "--child", "sender", "--url", url, "--rate", str(rate), "--seconds", str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        out, _ = sender.communicate(timeout=seconds + 120)
        sent = json.loads(out.strip().splitlines()[-1].split(" ", 1)[1])["sent"]
        deadline = time.monotonic() + 30
        while lf.status().received < sent and time.monotonic() < deadline:
            time.sleep(0.05)
        received = lf.status().received
        redraws = getattr(view, "redraws", None)
        view.close()
    lat = np.concatenate(latencies) if latencies else np.array([np.nan])
    return {
        "case": "f",
        "target_rate": rate,
        "sent": sent,
        "received": received,
        "events_per_s": received / seconds,
        "latency_p50_ms": float(np.percentile(lat, 50) * 1000),
        "latency_p99_ms": float(np.percentile(lat, 99) * 1000),
        "redraws": redraws,
    }


def sender(url: str, rate: float, seconds: float) -> dict[str, Any]:
    """Send fresh events (timestamp = send time) at ``rate`` for ``seconds``, in 10 ms slices."""
    from theia_frames import Client, Event

    sent = 0
    slice_s = 0.01
    with Client(url) as client:
        t0 = time.monotonic()
        while (elapsed := time.monotonic() - t0) < seconds:
            due = int(rate * elapsed) - sent
            if due > 0:
                now = time.time()
                client.send_many(
                    [Event(timestamp=now, source="/dev/sensors/bench", tags=["sensor", "temp", "site-a"],
                           content="21.5C") for _ in range(due)]
                )
                sent += due
            else:
                time.sleep(slice_s)
        flush = getattr(client, "flush", None)
        if flush is not None:
            flush()
    return {"sent": sent}


def run_child(args: argparse.Namespace) -> None:
    kind = args.child
    if kind == "load":
        emit(case_load(args.url, args.n))
    elif kind == "a":
        emit(case_find(args.url, args.n, batch=True))
    elif kind == "b":
        emit(case_find(args.url, args.n, batch=False))
    elif kind == "c":
        emit(case_baseline(args.url, args.n))
    elif kind == "h":
        emit(case_async_find(args.url, args.n))
    elif kind == "d":
        emit(case_read_json(args.path))
    elif kind == "g":
        emit(case_helpers(args.url))
    elif kind == "f":
        emit(case_live(args.url, args.rate, args.seconds))
    elif kind == "t":
        emit(case_send_table(args.url, args.n))
    elif kind == "q":
        emit(case_query(args.url, args.n, args.query))
    elif kind == "k":
        emit(case_duckdb(args.path, args.n, args.query))
    elif kind == "o":
        emit(case_polars(args.url, args.n, args.query))
    elif kind == "l":
        emit(case_polars_parquet(args.path, args.n, args.query))
    elif kind == "p":
        emit(case_read_parquet(args.path))
    elif kind == "w":
        emit(case_first_message(args.url, args.n))
    elif kind == "parquet":
        write_parquet(args.n, args.path)
        emit({"case": "parquet"})
    elif kind == "sender":
        emit(sender(args.url, args.rate, args.seconds))
    else:  # pragma: no cover
        raise SystemExit(f"unknown case {kind}")


# ----------------------------------------------------------------------------- parent


def child(kind: str, **kw: Any) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", kind, "--workload", WORKLOAD]
    for key, value in kw.items():
        cmd += [f"--{key}", str(value)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"case {kind} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return json.loads(lines[-1][len("RESULT ") :])


def start_collector(db: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "theia_frames", "serve", "--db", db, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"ws://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the collector did not start")


def write_jsonl(n: int, path: str) -> None:
    with open(path, "w") as f:
        for e in workload(n):
            f.write(json.dumps({"id": e.id, "timestamp": e.timestamp, "source": e.source,
                                "tags": e.tags, "content": e.content}) + "\n")


def median(rs: list[dict[str, Any]]) -> dict[str, Any]:
    med = sorted(rs, key=lambda r: r["seconds"])[len(rs) // 2]
    return dict(med, all_seconds=[r["seconds"] for r in rs])


def store_size(db: str, n: int) -> dict[str, Any]:
    """Bytes of the collector's store: its chunks' data (their parts included) and its files
    (database and WAL)."""
    import sqlite3

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        data = con.execute("SELECT coalesce(sum(length(data)), 0), count(*) FROM chunks").fetchone()
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "chunk_columns" in tables:
            data = (data[0] + con.execute("SELECT coalesce(sum(length(data)), 0) FROM chunk_columns").fetchone()[0], data[1])
    finally:
        con.close()
    files = sum(os.path.getsize(p) for p in (db, db + "-wal") if os.path.exists(p))
    return {"chunk_bytes": data[0], "chunks": data[1], "per_event": data[0] / n, "file_bytes": files}


def run_queries(args: argparse.Namespace, url: str, parquet: str) -> dict[str, Any]:
    """Each query of queries(), this project then DuckDB, this project to Polars then Polars,
    ``--repeat`` times interleaved; a failed run (a client timing out) is recorded as such."""
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    errors: dict[tuple[str, str], str] = {}
    for _ in range(args.repeat):
        for name in queries(args.n):
            for kind in "qkol":
                if kind not in args.cases or (kind, name) in errors:
                    continue
                try:
                    if kind in "qo":
                        r = child(kind, url=url, n=args.n, query=name)
                    else:
                        r = child(kind, path=parquet, n=args.n, query=name)
                except RuntimeError as exc:
                    errors[(kind, name)] = str(exc).strip().splitlines()[-1][:300]
                    continue
                runs.setdefault((kind, name), []).append(r)
    out: dict[str, Any] = {}
    for name in queries(args.n):
        out[name] = {}
        for kind in "qkol":
            if (kind, name) in runs:
                out[name][kind] = median(runs[(kind, name)])
            elif (kind, name) in errors:
                out[name][kind] = {"error": errors[(kind, name)]}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000, help="events in the workload")
    p.add_argument("--repeat", type=int, default=3, help="runs of each timed case (median reported)")
    p.add_argument("--live-rate", type=float, default=20_000, help="events/s sent in case f")
    p.add_argument("--live-seconds", type=float, default=10.0)
    p.add_argument("--cases", default="abcdefghtqkolpw")
    p.add_argument("--workload", choices=WORKLOADS, default="realistic", help="the events measured (see above)")
    p.add_argument("--json", default=str(HERE / "results" / "latest.json"), help="result file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    p.add_argument("--query", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    global WORKLOAD
    WORKLOAD = args.workload
    if args.child:
        run_child(args)
        return 0

    results: dict[str, Any] = {
        "n": args.n,
        "workload": args.workload,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "cases": {},
    }
    with tempfile.TemporaryDirectory(prefix="theia-bench-") as tmp:
        db = os.path.join(tmp, "bench.db")
        parquet = os.path.join(tmp, "events.parquet")
        collector, url = start_collector(db)
        try:
            print(f"loading {args.n:,} events into {url} (send_many of a pyarrow.Table) ...", flush=True)
            results["cases"]["t"] = child("t", url=url, n=args.n)
            results["store"] = store_size(db, args.n)
            if "e" in args.cases:
                # send_many(list[Event]) into a collector of its own (at most 1M events: memory)
                other, other_url = start_collector(os.path.join(tmp, "send.db"))
                try:
                    results["cases"]["e"] = child("load", url=other_url, n=args.n)
                finally:
                    other.terminate()
                    other.wait(timeout=30)
            if set("kpl") & set(args.cases):
                child("parquet", n=args.n, path=parquet)
                results["parquet"] = {"bytes": os.path.getsize(parquet), "per_event": os.path.getsize(parquet) / args.n}
            runs: dict[str, list[dict[str, Any]]] = {k: [] for k in "abcdhp"}
            if "d" in args.cases:
                write_jsonl(args.n, os.path.join(tmp, "events.jsonl"))
            for _ in range(args.repeat):
                for k in "abcdhp":
                    if k not in args.cases:
                        continue
                    if k == "d":
                        runs[k].append(child("d", path=os.path.join(tmp, "events.jsonl")))
                    elif k == "p":
                        runs[k].append(child("p", path=parquet))
                    else:
                        runs[k].append(child(k, url=url, n=args.n))
            for k, rs in runs.items():
                if rs:
                    results["cases"][k] = median(rs)
            if set("qkol") & set(args.cases):
                results["queries"] = run_queries(args, url, parquet)
            if "w" in args.cases:
                results["cases"]["w"] = child("w", url=url, n=args.n)
            if "g" in args.cases:
                results["cases"]["g"] = child("g", url=url)
            if "f" in args.cases:
                results["cases"]["f"] = child("f", url=url, rate=args.live_rate, seconds=args.live_seconds)
        finally:
            collector.terminate()
            collector.wait(timeout=30)

    print(report(results))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


def report(results: dict[str, Any]) -> str:
    c = results["cases"]
    lines = [f"theia_frames benchmarks: {results['n']:,} events ({results.get('workload', 'simple')} workload),"
             f" {results['machine']['cpus']} cores, {results['date']}", ""]
    lines.append(f"{'case':<62} {'events/s':>12} {'seconds':>8} {'peak RSS':>10} {'frame':>9}")

    def row(key: str, label: str) -> None:
        r = c.get(key)
        if not r:
            return
        rate = r["events"] / r["seconds"] if r["seconds"] else float("nan")
        rss = f"{r['rss_peak'] / 2**20:,.0f} MiB" if "rss_peak" in r else ""
        frame = f"{r['df_bytes'] / 2**20:,.0f} MiB" if "df_bytes" in r else ""
        lines.append(f"{label:<62} {rate:>12,.0f} {r['seconds']:>8.2f} {rss:>10} {frame:>9}")

    row("a", "(a) to_dataframe(client.find(f)), batched")
    row("h", "(h) await AsyncClient.find(f).to_dataframe(), batched")
    row("b", "(b) to_dataframe(client.find(f)), plain protocol")
    row("c", "(c) hand-written websocket-client loop + dicts (plain)")
    row("d", "(d) pandas.read_json(lines=True, engine='pyarrow'), local file")
    row("e", "(e) send_many(list[Event]) until stored")
    row("t", "(t) send_many(pyarrow.Table) until confirmed")
    row("p", "(p) read_events() of a local Parquet file")
    lines.append("")
    if "a" in c and "d" in c:
        lines.append(f"(a) / (d) = {c['d']['seconds'] / c['a']['seconds']:.2f}x")
    if "a" in c and "h" in c:
        lines.append(f"(h) / (a) = {c['a']['seconds'] / c['h']['seconds']:.2f}x (async vs sync, same frame)")
    if "b" in c and "c" in c:
        lines.append(f"(b) / (c) = {c['c']['seconds'] / c['b']['seconds']:.2f}x")
    if "a" in c:
        a = c["a"]
        lines.append(
            f"(a) peak RSS {a['rss_peak'] / 2**20:,.0f} MiB (of which {a['rss_base'] / 2**20:,.0f} MiB interpreter and"
            f" libraries before the query; growth {(a['rss_peak'] - a['rss_base']) / 2**20:,.0f} MiB)"
            f" vs final frame {a['df_bytes'] / 2**20:,.0f} MiB:"
            f" peak/frame {a['rss_peak'] / a['df_bytes']:.2f}x, growth/frame {(a['rss_peak'] - a['rss_base']) / a['df_bytes']:.2f}x"
        )
    if "a" in c and "p" in c:
        lines.append(f"(a) / (p) = {c['p']['seconds'] / c['a']['seconds']:.2f}x")
    if "store" in results:
        st = results["store"]
        lines.append(f"store: {st['per_event']:.1f} bytes/event in {st['chunks']:,} chunks ({st['file_bytes'] / 2**20:,.0f} MiB of files)")
    if "parquet" in results:
        lines.append(f"Parquet file: {results['parquet']['per_event']:.1f} bytes/event")
    if results.get("queries"):
        lines.append("")
        lines.append(f"{'query':<18} {'rows':>10} {'project s':>10} {'DuckDB s':>9} {'proj/Duck':>9}"
                     f" {'proj->pl s':>10} {'Polars s':>9} {'proj/pl':>8}")

        def secs(r: dict[str, Any]) -> str:
            return f"{r['seconds']:.3f}" if "seconds" in r else ("failed" if r else "")

        def ratio(a: dict[str, Any], b: dict[str, Any]) -> str:
            return f"{a['seconds'] / b['seconds']:.2f}" if "seconds" in a and "seconds" in b else ""

        for name, r in results["queries"].items():
            q, k, o, pl = (r.get(kind, {}) for kind in "qkol")
            rows = next((x["events"] for x in (q, k, o, pl) if "events" in x), "")
            differ = {kind: x["events"] for kind, x in zip("qkol", (q, k, o, pl)) if "events" in x and x["events"] != rows}
            mismatch = f" (rows differ: {differ})" if differ else ""
            lines.append(f"{name:<18} {rows:>10} {secs(q):>10} {secs(k):>9} {ratio(q, k):>9}"
                         f" {secs(o):>10} {secs(pl):>9} {ratio(o, pl):>8}{mismatch}")
            for kind, x in zip("qkol", (q, k, o, pl)):
                if "error" in x:
                    lines.append(f"    ({kind}) failed: {x['error']}")
    if "w" in c:
        w = c["w"]["first_message_seconds"]
        lines.append("(w) first message after ok: " + ", ".join(f"{k} {v:.3f} s" for k, v in w.items()))
    if "f" in c:
        f = c["f"]
        lines.append(
            f"(f) live at {f['target_rate']:,.0f}/s offered: {f['events_per_s']:,.0f} events/s received"
            f" ({f['received']:,}/{f['sent']:,}), latency p50 {f['latency_p50_ms']:.0f} ms,"
            f" p99 {f['latency_p99_ms']:.0f} ms, {f['redraws']} redraws"
        )
    if "g" in c:
        g = c["g"]
        lines.append(
            f"(g) on {g['events']:,} rows: bucket(1min, by=source) {g['bucket_seconds']:.3f} s,"
            f" explode_tags {g['explode_seconds']:.3f} s"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
