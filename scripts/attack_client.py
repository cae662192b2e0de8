"""Attacks on the client and the store reader, full size: what a hostile server or a damaged folder can cost.

    python scripts/attack_client.py                 # every case
    python scripts/attack_client.py trickle big     # some of them
    python scripts/attack_client.py --list

Each client case runs a scripted server (``tests/raw_peer.py``: the handshake
and every frame written by hand) in this process and the client in a child
process, so that the child's peak RSS is the client's own. Each store case
writes a folder here and reads it with :func:`theia_frames.read_store` in a
child. A case prints what happened, the time it took and the child's peak RSS
(``VmHWM``), next to the peak it had after its imports.

Client cases (RELIABILITY.md, "The client does not trust the server"):

- ``trickle``: 3 events, a 500 KB event trickled over 4 s, one more, a normal
  close; ``Client(idle_timeout=3)`` must return all 5, ``complete``, ended by the close;
- ``headers``: ``101``, then header lines as fast as the socket takes them;
  ``Client(timeout=5)`` must raise TheiaTimeoutError after about 5 s;
- ``big``: a frame announcing 1 GiB, its payload sent at full speed: refused on the header;
- ``fragments``: a message in 2,000,000 one-byte fragments: refused after 10,000;
- ``fragments-allowed``: the same with ``max_fragments=3_000_000``: read whole;
- ``bomb``: a 20 KB ZSTD-compressed Arrow message of one 512 MiB event on a
  batched ``/find`` (bounded by the batch decoder's own limit where it has one).

Store cases (``read_store``):

- ``sparse``: a 3 GB sparse file named like a data file, one event at its end;
- ``huge-event``: a file whose first preamble declares 3 GB, then 3 GB of zeros, then one event;
- ``preambles``: 48 MB of 6,000,000 broken preambles (``event:\\n\\n``), then one event;
- ``plausible``: 48 MB of ``event: 99 3 96\\n`` (3.2M preambles that parse), then one event;
- ``regions``: 1,000,000 damaged regions, each a broken line before a good event;
- ``symlink-loop``: a symbolic link loop named like a data file beside a good file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for extra in (ROOT, ROOT / "tests"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from raw_peer import OP_BINARY, OP_CONT, OP_TEXT, RawConn, RawPeer, server_frame  # noqa: E402

__all__ = ["CLIENT_CASES", "STORE_CASES", "main"]

_MB = 1024 * 1024
T0 = 1_700_000_000


def _rss_mb() -> float:
    """This process's peak RSS in MB: VmHWM, which starts afresh at exec (``ru_maxrss`` of a
    child of a large parent starts at the parent's size)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _plain_event(i: int, content: str = "x") -> bytes:
    from theia_frames.protocol.codec import encode
    from theia_frames.event import Event

    return encode(Event(id=f"e{i}", timestamp=T0 + i, source="/dev/s", content=content))


# --------------------------------------------------------------------------- client cases: the servers


def _hold(conn: RawConn, seconds: float = 30.0) -> None:
    conn.sock.settimeout(seconds)
    try:
        while True:
            conn.recv_frame()
    except (OSError, ConnectionError):
        pass


def _serve_trickle(conn: RawConn) -> None:
    conn.recv_message()
    conn.send_frame(OP_TEXT, b"ok")
    for i in range(3):
        conn.send_frame(OP_BINARY, _plain_event(i))
    conn.trickle(server_frame(OP_BINARY, _plain_event(3, "y" * 500_000)), 4.0, pieces=40)
    conn.send_frame(OP_BINARY, _plain_event(4))
    conn.close(1000)


def _serve_headers(conn: RawConn) -> None:
    conn.send_raw(b"HTTP/1.1 101 Switching Protocols\r\n")
    i = 0
    while True:
        conn.send_raw(b"".join(b"X-Filler-%d: %s\r\n" % (i + k, b"a" * 40) for k in range(100)))
        i += 100


def _serve_big(conn: RawConn) -> None:
    conn.recv_message()
    conn.send_frame(OP_TEXT, b"ok")
    conn.send_raw(server_frame(OP_BINARY, b"", length=1 << 30))
    chunk = b"\0" * _MB
    for _ in range(1024):
        conn.send_raw(chunk)
    _hold(conn)


def _serve_fragments(conn: RawConn) -> None:
    conn.recv_message()
    conn.send_frame(OP_TEXT, b"ok")
    raw = _plain_event(0, "z" * 2_000_000)
    frames = [server_frame(OP_BINARY, raw[:1], fin=False)]
    one = [server_frame(OP_CONT, raw[i : i + 1], fin=False) for i in range(1, len(raw) - 1)]
    for at in range(0, len(one), 100_000):
        conn.send_raw(b"".join((frames if at == 0 else []) + one[at : at + 100_000]))
    conn.send_raw(server_frame(OP_CONT, raw[-1:]))
    _hold(conn)


def _serve_bomb(conn: RawConn) -> None:
    import pyarrow as pa

    from theia_frames.protocol.arrow import event_schema

    conn.recv_message()
    conn.send_frame(OP_TEXT, b"ok")
    batch = pa.RecordBatch.from_arrays(
        [pa.array(["bomb"]), pa.array([float(T0)]), pa.array(["/dev/s"]).dictionary_encode(), pa.array([[]], pa.list_(pa.string())),
         pa.array(["b" * (512 * _MB)], pa.string())],
        schema=event_schema(),
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
        writer.write(batch)
    message = sink.getvalue().to_pybytes()
    del batch
    conn.send_frame(OP_BINARY, message)
    print(f"    (the bomb: {len(message):,} bytes on the wire)", flush=True)
    conn.close(1000)


# --------------------------------------------------------------------------- client cases: the client (child)


def _client_case(case: str, url: str) -> dict[str, Any]:
    import theia_frames as tf
    from theia_frames.client import Client

    base = _rss_mb()
    began = time.monotonic()
    out: dict[str, Any] = {"rss_base_mb": base}
    try:
        if case == "trickle":
            with Client(url, idle_timeout=3.0, batch=False) as client:
                result = client.find(tf.Filter(T0))
                got = list(result)
            out["outcome"] = f"{len(got)} of 5 events, complete={result.complete}, ended_by={result.ended_by!r}"
            out["ok"] = len(got) == 5 and result.complete and result.ended_by == "close"
        elif case == "headers":
            try:
                tf.connect(url, timeout=5.0)
                out["outcome"], out["ok"] = "connected (!)", False
            except tf.TheiaTimeoutError as exc:
                out["outcome"], out["ok"] = f"TheiaTimeoutError: {exc}", True
        elif case in ("big", "fragments", "fragments-allowed", "bomb"):
            kw: dict[str, Any] = {"max_fragments": 3_000_000} if case == "fragments-allowed" else {}
            with Client(url, idle_timeout=10.0, timeout=10.0, batch=case == "bomb", **kw) as client:
                try:
                    result = client.find(tf.Filter(T0))
                    got = list(result)
                    out["outcome"] = f"read {len(got)} event(s), {sum(len(e.content) for e in got):,} bytes of content"
                    out["outcome"] += f", {result.skipped} refused: {result.errors[0]}" if result.errors else ""
                    out["ok"] = case == "fragments-allowed" and len(got) == 1 or (case == "bomb" and not got)
                except tf.ProtocolError as exc:
                    out["outcome"], out["ok"] = f"ProtocolError: {exc}", case in ("big", "fragments")
        else:
            raise SystemExit(f"unknown client case {case!r}")
    except tf.TheiaError as exc:
        out["outcome"], out["ok"] = f"{type(exc).__name__}: {exc}", False
    out["seconds"] = time.monotonic() - began
    out["rss_peak_mb"] = _rss_mb()
    return out


CLIENT_CASES: dict[str, tuple[Callable[[RawConn], None], dict[str, Any]]] = {
    "trickle": (_serve_trickle, {}),
    "headers": (_serve_headers, {"handshake": False}),
    "big": (_serve_big, {}),
    "fragments": (_serve_fragments, {}),
    "fragments-allowed": (_serve_fragments, {}),
    "bomb": (_serve_bomb, {"subprotocol": "theia-frames.v2"}),
}


# --------------------------------------------------------------------------- store cases


def _write_sparse(path: Path, size: int, head: bytes = b"", tail: bytes = b"") -> None:
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
    with open(path, "ab") as f:
        f.write(tail)


def _make_store(case: str, root: Path) -> None:
    name = f"{T0}-{T0 + 60}"
    good = _plain_event(0) + b"\n"
    if case == "sparse":
        _write_sparse(root / name, 3 * 1024**3, tail=b"\n" + good)
    elif case == "huge-event":
        _write_sparse(root / name, 3 * 1024**3, head=b"event: 3000000000 10 2999999990\n", tail=b"\n" + good)
    elif case == "preambles":
        (root / name).write_bytes(b"event:\n\n" * 6_000_000 + good)
    elif case == "plausible":
        (root / name).write_bytes(b"event: 99 3 96\n" * 3_200_000 + good)
    elif case == "regions":
        (root / name).write_bytes(b"".join(b"broken %d\n" % i + _plain_event(i) + b"\n" for i in range(1_000_000)))
    elif case == "symlink-loop":
        (root / name).write_bytes(good)
        loop = root / f"{T0 + 60}-{T0 + 120}"
        os.symlink(loop.name, loop)
    else:
        raise SystemExit(f"unknown store case {case!r}")


def _store_case(case: str, path: str) -> dict[str, Any]:
    import warnings

    import theia_frames as tf

    base = _rss_mb()
    began = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            df = tf.read_store(path, progress=False)
        except Exception as exc:  # what must not happen: shown as the outcome
            return {"outcome": f"raised {type(exc).__name__}: {exc}", "ok": False, "rss_base_mb": base,
                    "seconds": time.monotonic() - began, "rss_peak_mb": _rss_mb()}
    seconds = time.monotonic() - began
    report = df.attrs["theia_report"]
    warning = sum(len(str(w.message)) for w in caught)
    first = report.damage[0] if report.damage else None
    return {
        "outcome": f"{len(df):,} event(s); {report.damaged:,} damaged region(s) counted, {len(report.damage):,} kept, "
        f"{report.skipped_bytes:,} bytes skipped; warning {warning:,} characters"
        + (f"; first: {str(first)[:110]}" if first else ""),
        "ok": len(df) >= 1 and not report.ok,
        "rss_base_mb": base,
        "seconds": seconds,
        "rss_peak_mb": _rss_mb(),
    }


STORE_CASES = ["sparse", "huge-event", "preambles", "plausible", "regions", "symlink-loop"]


# --------------------------------------------------------------------------- running


def _child(kind: str, case: str, target: str) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), f"--{kind}", case, target],
        capture_output=True, text=True, env=env, timeout=600,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"outcome": f"child failed ({proc.returncode}): {proc.stderr.strip()[-300:]}", "ok": False,
                "seconds": 0.0, "rss_peak_mb": 0.0, "rss_base_mb": 0.0}
    return json.loads(lines[-1])


def run_case(case: str) -> dict[str, Any]:
    if case in CLIENT_CASES:
        script, options = CLIENT_CASES[case]
        with RawPeer(script, **options) as peer:
            return _child("client", case, peer.url)
    with tempfile.TemporaryDirectory(prefix="attack-store-") as tmp:
        _make_store(case, Path(tmp))
        return _child("store", case, tmp)


def _header() -> str:
    import pyarrow
    import websocket

    return (
        f"{datetime.date.today()} {platform.node()}: {os.cpu_count()} cores, Linux {platform.release()}, "
        f"Python {platform.python_version()}, pyarrow {pyarrow.__version__}, websocket-client {websocket.__version__}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="*", help="cases to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the cases")
    parser.add_argument("--client", nargs=2, metavar=("CASE", "URL"), help=argparse.SUPPRESS)
    parser.add_argument("--store", nargs=2, metavar=("CASE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        print(json.dumps(_client_case(*args.client)))
        return 0
    if args.store:
        print(json.dumps(_store_case(*args.store)))
        return 0
    every = [*CLIENT_CASES, *STORE_CASES]
    if args.list:
        print("\n".join(every))
        return 0
    unknown = [c for c in args.cases if c not in every]
    if unknown:
        parser.error(f"unknown case(s): {', '.join(unknown)} (see --list)")
    print(_header())
    failed = 0
    for case in args.cases or every:
        print(f"{case}:", flush=True)
        r = run_case(case)
        failed += not r["ok"]
        print(f"    {'ok' if r['ok'] else 'NOT OK'}: {r['outcome']}")
        print(f"    {r['seconds']:.2f} s; peak RSS {r['rss_peak_mb']:.0f} MB (after imports {r['rss_base_mb']:.0f} MB)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
