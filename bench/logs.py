"""read_log on a generated syslog file, against a per-line ``re`` + ``datetime.strptime`` loop.

    python bench/logs.py                    # a 1 GB file (the recorded figures)
    python bench/logs.py --size 50MB        # a quick run

Writes a syslog-style file (RFC 3164 lines from a few hosts and programs,
times one to a few hundred milliseconds apart, crossing a new year so the year
rolls over) under a temporary folder, then times, in this one process:

  r   theia_frames.read_log(path, format="syslog", year=...) -> one event frame
  i   the same through iter_log (frames of 200,000 lines), as import-log reads
  b   the baseline: for each line, re.match + datetime.strptime + a list of dicts,
      then pandas.DataFrame (on the first --baseline-lines lines; its rate is per line)

It prints lines/s for each (and the CPU seconds of the process, all threads: on a
shared machine the wall time also holds what others ran) and the ratios r / b and
i / b; every rate is measured in the same run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HOSTS = ["gw", "db-1", "db-2", "web-01", "web-02", "cache"]
PROGRAMS = ["sshd", "cron", "kernel", "nginx", "postfix/smtpd", "systemd"]
MESSAGES = [
    "Accepted password for {u} from 10.0.{a}.{b} port {p} ssh2",
    "Failed password for invalid user {u} from 203.0.{a}.{b} port {p} ssh2",
    "pam_unix(cron:session): session opened for user {u} by (uid=0)",
    "connect from unknown[192.168.{a}.{b}]",
    "Started Session {p} of user {u}.",
    "TCP: request_sock_TCP: Possible SYN flooding on port {p}. Sending cookies.",
]
USERS = ["root", "ann", "bob", "deploy", "admin", "git"]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMG]?B?)", text.strip().upper())
    if not m:
        raise SystemExit(f"bad size {text!r}: e.g. 1GB, 200MB")
    scale = {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "M": 1e6, "MB": 1e6, "G": 1e9, "GB": 1e9}[m.group(2)]
    return int(float(m.group(1)) * scale)


def write_syslog(path: Path, size: int, seed: int = 1) -> int:
    """A syslog file of about ``size`` bytes; returns its number of lines."""
    rng = np.random.default_rng(seed)
    start = dt.datetime(2023, 12, 31, 20, 0, 0)
    lines = 0
    written = 0
    t = 0.0
    block = 100_000
    with open(path, "w", encoding="utf-8") as f:
        while written < size:
            steps = rng.integers(1, 300, block) / 1000.0
            times = t + np.cumsum(steps)
            t = float(times[-1])
            hosts = rng.integers(0, len(HOSTS), block)
            progs = rng.integers(0, len(PROGRAMS), block)
            msgs = rng.integers(0, len(MESSAGES), block)
            nums = rng.integers(0, 255, (block, 3))
            out = []
            for i in range(block):
                when = start + dt.timedelta(seconds=float(times[i]))
                stamp = f"{MONTHS[when.month - 1]} {when.day:2d} {when:%H:%M:%S}"
                text = MESSAGES[msgs[i]].format(u=USERS[nums[i, 0] % 6], a=nums[i, 1], b=nums[i, 2], p=1024 + nums[i, 0] * 37)
                out.append(f"{stamp} {HOSTS[hosts[i]]} {PROGRAMS[progs[i]]}[{1000 + nums[i, 1]}]: {text}\n")
            data = "".join(out)
            f.write(data)
            written += len(data.encode())
            lines += block
    return lines


_LINE = re.compile(r"^(\w{3} +\d{1,2} \d\d:\d\d:\d\d) (\S+) ([^\s\[\]:]+)(?:\[(\d+)\])?: ?(.*)$")


def baseline(path: Path, limit: int) -> int:
    """A per-line loop: re.match, datetime.strptime (with the year added), a dict per line, a DataFrame."""
    import pandas as pd

    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f):
            if n >= limit:
                break
            m = _LINE.match(line.rstrip("\n"))
            if m is None:
                continue
            when = dt.datetime.strptime("2023 " + m.group(1), "%Y %b %d %H:%M:%S").replace(tzinfo=dt.timezone.utc)
            rows.append({"timestamp": when, "source": m.group(2), "app": m.group(3), "pid": m.group(4), "content": m.group(5)})
    df = pd.DataFrame(rows)
    return len(df)


def timed(work: Any) -> tuple[Any, float, float]:
    """What ``work()`` returns, its wall seconds and the CPU seconds of this process (all threads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = work()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1GB", help="size of the generated file (default 1GB)")
    ap.add_argument("--baseline-lines", type=int, default=1_000_000, help="lines the per-line loop reads (default 1,000,000)")
    ap.add_argument("--dir", default=None, help="folder for the file (default: a temporary one, removed after)")
    args = ap.parse_args()

    import pandas as pd
    import pyarrow as pa

    import theia_frames as tf

    size = parse_size(args.size)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "syslog"
        t0 = time.perf_counter()
        lines = write_syslog(path, size)
        print(f"wrote {lines:,} lines, {os.path.getsize(path) / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

        with open(path, encoding="utf-8") as f:  # imports and first calls, outside the timings
            tf.read_log([next(f) for _ in range(1000)], "syslog", year=2023)
        (b_rows, b_secs, b_cpu) = timed(lambda: baseline(path, args.baseline_lines))
        b_rate = b_rows / b_secs

        (n, i_secs, i_cpu) = timed(lambda: sum(len(frame) for frame in tf.iter_log(path, "syslog", year=2023)))
        assert n == lines, (n, lines)

        (df, r_secs, r_cpu) = timed(lambda: tf.read_log(path, "syslog", year=2023))
        assert len(df) == lines and df.attrs["theia_report"].ok
        assert df["timestamp"].iloc[-1].year == 2024, "the year rolls over"
        del df

        print(f"\nread_log on a generated syslog file: {lines:,} lines, {os.path.getsize(path) / 1e9:.2f} GB, "
              f"{os.cpu_count()} cores, pandas {pd.__version__}, pyarrow {pa.__version__}\n")
        print(f"{'case':<66}{'lines/s':>12}{'seconds':>9}{'CPU s':>8}{'lines/CPU s':>13}")
        for name, count, secs, cpu in (
            ("(r) read_log(path, format=syslog) -> one frame", lines, r_secs, r_cpu),
            ("(i) iter_log(path, format=syslog), frames of 200,000 lines", lines, i_secs, i_cpu),
            (f"(b) per-line re + datetime.strptime loop ({b_rows:,} lines)", b_rows, b_secs, b_cpu),
        ):
            print(f"{name:<66}{count / secs:>12,.0f}{secs:>9.2f}{cpu:>8.2f}{count / cpu:>13,.0f}")
        print(f"\n(r) / (b) = {lines / r_secs / b_rate:.2f}x")
        print(f"(i) / (b) = {lines / i_secs / b_rate:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
