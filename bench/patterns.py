"""Message patterns: grouping accuracy on the eight loghub logs, and speed against drain3 per line.

    python bench/patterns.py                      # both: the accuracy table, then 1,000,000 lines
    python bench/patterns.py --accuracy           # the table only
    python bench/patterns.py --lines 100000       # a quicker speed run

Accuracy: ``tf.patterns`` with its one default configuration on the ``Content``
column of each ``tests/data/loghub/*/*_structured.csv`` (the message without
its header, as the published figures are measured), against the hand-labelled
``EventId``. Grouping accuracy is the share of lines whose predicted group has
exactly the members of their true group.

Speed: ``--lines`` lines made from the 16,000 loghub messages, each a random
one of them with every run of digits replaced by random digits of the same
length (so numbers, addresses, ports, block and task ids change on every
line). Timed on the same lines, in this run, one after the other:

  patterns      tf.patterns(frame, "content"): masks, distinct shapes, drain3 on those
  per-line      drain3.TemplateMiner(config).add_log_message(line) for every line: "masked" with
                the number, IPv4 and hex masks of drain3's own example, "defaults" without masks

Printed: seconds, lines/s, the ratio, and what memory follows (distinct raw
lines, distinct masked shapes, the miner's entries, the process's peak RSS).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
LOGHUB = HERE.parent / "tests" / "data" / "loghub"
LOGS = ["HDFS", "Hadoop", "Spark", "Zookeeper", "HealthApp", "Apache", "Proxifier", "OpenSSH"]
#: Drain's published grouping accuracy on these samples (with masks written per log).
DRAIN = {
    "HDFS": 0.9975, "Hadoop": 0.9475, "Spark": 0.92, "Zookeeper": 0.9665,
    "HealthApp": 0.78, "Apache": 1.0, "Proxifier": 0.5265, "OpenSSH": 0.7875,
}


def structured(name: str) -> pd.DataFrame:
    return pd.read_csv(LOGHUB / name / f"{name}_2k.log_structured.csv", dtype=str, keep_default_na=False)


def grouping_accuracy(truth: Any, predicted: Any) -> float:
    """The share of lines whose predicted group has exactly the members of their true group.

    >>> grouping_accuracy(["a", "a", "b", "c"], [1, 1, 2, 2])
    0.5
    """
    frame = pd.DataFrame({"t": np.asarray(truth, dtype=object), "p": pd.Series(predicted).astype(str).to_numpy()})
    pairs = frame.groupby(["t", "p"]).size()
    per_truth = frame.groupby("t").size()
    per_pred = frame.groupby("p").size()
    correct = sum(n for (t, p), n in pairs.items() if n == per_truth[t] == per_pred[p])
    return correct / len(frame)


def accuracy_table() -> dict[str, dict[str, Any]]:
    import theia_frames as tf

    rows = {}
    for name in LOGS:
        df = structured(name)
        out = tf.patterns(df, "Content")
        rows[name] = {
            "accuracy": grouping_accuracy(df["EventId"], out["pattern_id"]),
            "templates": int(out["pattern_id"].nunique()),
            "truth": int(df["EventId"].nunique()),
            "drain": DRAIN[name],
        }
    return rows


def print_accuracy(rows: dict[str, dict[str, Any]]) -> None:
    print("| log | grouping accuracy | Drain (published) | templates found / truth |")
    print("| --- | ---: | ---: | ---: |")
    for name, r in rows.items():
        print(f"| {name} | {r['accuracy']:.4f} | {r['drain']:.4f} | {r['templates']} / {r['truth']} |")
    mean = np.mean([r["accuracy"] for r in rows.values()])
    print(f"| average | {mean:.4f} | {np.mean(list(DRAIN.values())):.4f} | |")


def make_lines(n: int, seed: int = 7) -> list[str]:
    """``n`` loghub messages, each with its digits replaced by random ones (runs keep their length)."""
    messages = [m for name in LOGS for m in structured(name)["Content"]]
    rng = random.Random(seed)
    digits = re.compile(r"\d+")

    def vary(match: re.Match[str]) -> str:
        width = len(match.group())
        return str(rng.randrange(10 ** (width - 1) if width > 1 else 0, 10**width))

    return [digits.sub(vary, messages[rng.randrange(len(messages))]) for _ in range(n)]


def speed(n: int, baselines: tuple[str, ...] = ("masked", "defaults")) -> dict[str, Any]:
    import theia_frames as tf
    from drain3 import TemplateMiner

    lines = make_lines(n)
    frame = pd.DataFrame({"content": pd.array(lines, dtype="string[pyarrow]")})
    result: dict[str, Any] = {"lines": n, "distinct_lines": len(set(lines))}

    miner = tf.PatternMiner()
    t = time.perf_counter()
    out = tf.patterns(frame, miner=miner)
    result["patterns_s"] = time.perf_counter() - t
    result["shapes"] = out.attrs["theia_patterns"]["shapes"]
    result["patterns"] = out.attrs["theia_patterns"]["patterns"]
    result["miner_shapes"] = len(miner.templates()) and int(miner.templates()["shapes"].sum())
    result["rss_after_patterns_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    result["patterns_lines_per_s"] = n / result["patterns_s"]
    for name in baselines:
        per_line = TemplateMiner(config=drain3_config(masked=name == "masked"))
        t = time.perf_counter()
        for line in lines:
            per_line.add_log_message(line)
        seconds = time.perf_counter() - t
        result[name] = {
            "seconds": seconds,
            "lines_per_s": n / seconds,
            "clusters": len(per_line.drain.clusters),
            "ratio": seconds / result["patterns_s"],
        }
    return result


def drain3_config(masked: bool) -> Any:
    """drain3's defaults; ``masked``: plus the number, IPv4 and hex masks of drain3's own example."""
    from drain3.masking import MaskingInstruction
    from drain3.template_miner_config import TemplateMinerConfig

    config = TemplateMinerConfig()  # its defaults (no drain3.ini is read when a config is given)
    if masked:
        edge, end = r"((?<=[^A-Za-z0-9])|^)", r"((?=[^A-Za-z0-9])|$)"
        config.masking_instructions = [
            MaskingInstruction(edge + r"(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})" + end, "IP"),
            MaskingInstruction(edge + r"(0x[a-f0-9A-F]+)" + end, "HEX"),
            MaskingInstruction(edge + r"([\-\+]?\d+)" + end, "NUM"),
        ]
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accuracy", action="store_true", help="the accuracy table only")
    parser.add_argument("--lines", type=int, default=1_000_000, help="lines of the speed run (default 1,000,000)")
    parser.add_argument("--per-line", default="masked,defaults",
                        help="the per-line drain3 baselines to time: masked (its example's number/IP/hex masks), "
                             "defaults (none); comma-separated, empty for none")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)

    rows = accuracy_table()
    print_accuracy(rows)
    figures: dict[str, Any] = {"accuracy": rows}
    if not args.accuracy:
        s = speed(args.lines, tuple(b for b in args.per_line.split(",") if b))
        figures["speed"] = s
        print()
        print(f"{s['lines']:,} lines ({s['distinct_lines']:,} distinct, {s['shapes']:,} distinct masked shapes, "
              f"{s['patterns']} patterns)")
        print(f"  patterns   {s['patterns_s']:7.2f} s  {s['patterns_lines_per_s']:>10,.0f} lines/s")
        for name in ("masked", "defaults"):
            if name in s:
                b = s[name]
                print(f"  per-line {name:9s} {b['seconds']:7.2f} s  {b['lines_per_s']:>10,.0f} lines/s "
                      f"({b['clusters']} clusters): patterns is {b['ratio']:.1f}x faster")
        print(f"  memory     the miner holds {s['miner_shapes']:,} shapes; peak RSS after patterns "
              f"{s['rss_after_patterns_mb']:.0f} MB")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
