"""The README's examples of inputs written as a pandas user writes them run as written."""

from __future__ import annotations

import datetime
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

import theia_frames as tf

README = Path(__file__).resolve().parent.parent / "README.md"


def block_with(text: str) -> str:
    blocks = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S) if text in b]
    assert len(blocks) == 1, text
    return blocks[0]


def test_the_time_examples_run():
    namespace = {"tf": tf, "pd": pd, "np": np, "datetime": datetime.datetime}
    exec(compile(block_with('tf.Filter("-15m")'), "README.md", "exec"), namespace)


def test_the_send_many_examples_run(collector, sender):
    sender.send_many(tf.sensor_events(20, start=1_700_000_000), wait=True)
    df = tf.to_dataframe(sender.find(tf.Filter(0)), progress=False)
    logs = pd.DataFrame({"time": pd.to_datetime(["2024-05-01 10:00"]), "message": ["boot"], "host": ["web-1"]})
    pa_table = pa.Table.from_pandas(df.head(3))
    with tf.serve(db=":memory:", port=0) as other, tf.Client(other.url) as client:
        namespace = {"client": client, "df": df, "logs": logs, "pa_table": pa_table}
        exec(compile(block_with("client.send_many(df)"), "README.md", "exec"), namespace)
        client.flush()
        again = tf.to_dataframe(client.find(tf.Filter(0)), progress=False)
    assert len(again) == 20 + 1  # pa_table holds 3 of df's events: stored once
    assert again["source"].astype(str).str.contains("web-1").sum() == 1
