"""to_polars of a large result keeps the chunks it was converted in (no copy into one
buffer per column), with the same values and types as the contiguous frame."""

from __future__ import annotations

import pyarrow as pa
import pytest

from theia_frames.frames.convert import to_arrow, to_polars
from theia_frames.protocol.arrow import event_schema


def batches(n: int, size: int) -> list[pa.RecordBatch]:
    out = []
    for begin in range(0, n, size):
        rows = range(begin, min(n, begin + size))
        out.append(pa.RecordBatch.from_arrays(
            [pa.array([f"id{i:07d}" for i in rows]), pa.array([1.0 + i / 1000 for i in rows]),
             pa.array([f"/s{i % 7}" for i in rows]).dictionary_encode(),
             pa.array([["a", "b"] if i % 3 else [] for i in rows], pa.list_(pa.string())),
             pa.array([f"c{i % 11}" for i in rows])],
            schema=event_schema()))
    return out


def test_to_polars_of_many_chunks_keeps_them_and_the_values():
    pl = pytest.importorskip("polars")
    data = batches(200_000, 50_000)
    frame = to_polars(data)
    assert frame.n_chunks("all") == [to_arrow(data).column(name).num_chunks for name in frame.columns]
    assert max(frame.n_chunks("all")) > 1
    whole = pl.from_arrow(to_arrow(data))
    assert frame.schema == whole.schema and frame.height == 200_000
    assert frame.equals(whole)
    assert frame.rechunk().n_chunks("all") == [1] * 5
    assert frame["tags"].to_list()[:3] == [[], ["a", "b"], ["a", "b"]]
