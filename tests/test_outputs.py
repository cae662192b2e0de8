"""Outputs beside pandas: to_arrow, to_polars, and hive-partitioned Parquet datasets read by Dask, DuckDB and Polars."""

from __future__ import annotations

import sys

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

import theia_frames as tf
from theia_frames.frames import export
from theia_frames.event import Event
from theia_frames.exceptions import MissingDependencyError, UsageError
from theia_frames.frames.export import write_events
from theia_frames.frames.convert import EVENT_DTYPES, to_arrow, to_dataframe, to_polars

T0 = 1_700_000_000.0
DAY = 86_400.0
SOURCES = ["/dev/sensors/temp-1", "/var/log/a:b", "ü =%/x"]


def sample(n: int = 300) -> list[Event]:
    # three days, three sources (one with the characters a folder name must encode)
    return [
        Event(
            id=f"id-{i:04d}",
            timestamp=T0 + i * (3 * DAY / n) + 0.1234567,
            source=SOURCES[i % 3],
            tags=[["sensor", "temp"], [], ["x"]][i % 3],
            content=[f"{i}.5C", 'multi\nline "quoted"', ""][i % 3],
        )
        for i in range(n)
    ]


def ordered(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["timestamp", "id"]).reset_index(drop=True)


# --------------------------------------------------------------------------- to_arrow / to_polars


def test_to_arrow_is_the_frame_before_pandas(collector):
    evs = sample()
    with tf.Client(collector.url) as client:
        client.send_many(evs)
        client.flush()
        table = to_arrow(client.find(tf.Filter(0)))
        df = to_dataframe(client.find(tf.Filter(0)))
    assert isinstance(table, pa.Table) and table.num_rows == len(evs)
    types = {f.name: str(f.type) for f in table.schema}
    assert types == {
        "timestamp": "timestamp[ns, tz=UTC]",
        "source": "dictionary<values=string, indices=int32, ordered=0>",
        "tags": "list<item: string>",
        "content": "string",
        "id": "string",
    }
    back = table.to_pandas(types_mapper=lambda t: pd.ArrowDtype(t) if pa.types.is_list(t) else (pd.StringDtype("pyarrow") if pa.types.is_string(t) else None))
    pd.testing.assert_frame_equal(back, df)
    assert to_arrow(evs, columns=["id", "source"]).column_names == ["id", "source"]
    assert to_arrow([]).num_rows == 0


def test_to_polars_has_the_types_and_values_of_the_frame():
    pl = pytest.importorskip("polars")
    evs = sample(30)
    frame = to_polars(evs)
    assert frame.schema == pl.Schema(
        {"timestamp": pl.Datetime("ns", "UTC"), "source": pl.Categorical(), "tags": pl.List(pl.String),
         "content": pl.String, "id": pl.String}
    )
    df = to_dataframe(evs)
    assert frame["id"].to_list() == df["id"].tolist()
    assert frame["tags"].to_list() == df["tags"].tolist()
    assert frame["source"].cast(pl.String).to_list() == df["source"].astype(str).tolist()
    assert [t.isoformat() for t in frame["timestamp"].to_list()] == [t.isoformat() for t in df["timestamp"]]


def test_to_polars_without_polars_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "polars", None)
    with pytest.raises(MissingDependencyError) as caught:
        to_polars(sample(2))
    assert caught.value.extra == "polars"


# --------------------------------------------------------------------------- partitioned datasets


@pytest.mark.parametrize("keys", [("date",), ("source",), ("date", "source")])
def test_a_partitioned_dataset_reads_back_in_dask_duckdb_and_polars(tmp_path, keys):
    evs = sample()
    out = tmp_path / "events"
    assert write_events(evs, out, partition_by=keys, batch_size=70) == len(evs)
    folders = {p.parent.relative_to(out).as_posix() for p in out.rglob("*.parquet")}
    if keys == ("date",):
        assert folders == {"date=2023-11-14", "date=2023-11-15", "date=2023-11-16", "date=2023-11-17"}
    if "source" in keys:
        assert any("source=%2Fdev%2Fsensors%2Ftemp-1" in f for f in folders)
    want = ordered(to_dataframe(evs))
    day = want["timestamp"].dt.tz_convert("UTC").dt.date

    # pyarrow (and so anything on it)
    table = ds.dataset(out, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == len(evs)

    # Dask
    dd = pytest.importorskip("dask.dataframe")
    got = dd.read_parquet(str(out), dtype_backend="pyarrow").compute()
    got["timestamp"] = got["timestamp"].astype("datetime64[ns, UTC]")
    assert str(got["timestamp"].dtype) == "datetime64[ns, UTC]"
    got = ordered(got)
    assert got["id"].tolist() == want["id"].tolist()
    assert (got["timestamp"] == want["timestamp"]).all()
    assert got["source"].astype(str).tolist() == want["source"].astype(str).tolist()
    assert [list(t) for t in got["tags"]] == want["tags"].tolist()
    assert got["content"].tolist() == want["content"].tolist()
    if "date" in keys:
        assert pd.to_datetime(got["date"].astype(str)).dt.date.tolist() == day.tolist()

    # DuckDB
    duckdb = pytest.importorskip("duckdb")
    con = duckdb.connect()
    rel = con.sql(f"SELECT * FROM read_parquet('{out}/**/*.parquet', hive_partitioning = true) ORDER BY timestamp, id")
    types = dict(zip(rel.columns, map(str, rel.types)))
    assert types["timestamp"] == "TIMESTAMP WITH TIME ZONE"
    assert types["tags"] == "VARCHAR[]" and types["content"] == types["id"] == types["source"] == "VARCHAR"
    if "date" in keys:
        assert types["date"] == "DATE"
    rows = rel.fetchall()
    names = rel.columns
    assert [r[names.index("id")] for r in rows] == want["id"].tolist()
    assert [r[names.index("source")] for r in rows] == want["source"].astype(str).tolist()
    assert [r[names.index("tags")] for r in rows] == want["tags"].tolist()
    if "date" in keys:
        assert [r[names.index("date")] for r in rows] == day.tolist()

    # Polars
    pl = pytest.importorskip("polars")
    frame = pl.read_parquet(str(out), hive_partitioning=True).sort(["timestamp", "id"])
    assert frame.schema["timestamp"] == pl.Datetime("us", "UTC")
    assert frame.schema["tags"] == pl.List(pl.String) and frame.schema["source"] == pl.String
    if "date" in keys:
        assert frame.schema["date"] == pl.Date
        assert frame["date"].to_list() == day.tolist()
    assert frame["id"].to_list() == want["id"].tolist()
    assert frame["source"].to_list() == want["source"].astype(str).tolist()


def test_a_dataset_of_a_frame_and_of_no_events(tmp_path):
    df = to_dataframe(sample(20))
    assert write_events(df, tmp_path / "frame", partition_by=("source",)) == 20
    assert ds.dataset(tmp_path / "frame", partitioning="hive").count_rows() == 20
    assert write_events([], tmp_path / "none", partition_by=("date",)) == 0
    assert (tmp_path / "none").is_dir()


def test_a_dataset_refuses_what_it_cannot_write_and_leaves_nothing(tmp_path, monkeypatch):
    evs = sample(30)
    (tmp_path / "taken").mkdir()
    with pytest.raises(UsageError, match="exists"):
        write_events(evs, tmp_path / "taken", partition_by=("date",))
    for keys in (("day",), (), ("date", "date"), 3):
        with pytest.raises(UsageError, match="partition_by"):
            write_events(evs, tmp_path / "x", partition_by=keys)
    with pytest.raises(UsageError, match="Parquet"):
        write_events(evs, tmp_path / "x", partition_by=("date",), format="csv")
    with pytest.raises(UsageError, match="no folder"):
        write_events(evs, tmp_path / "no" / "x", partition_by=("date",))
    monkeypatch.setattr(export, "MAX_DATASET_PARTITIONS", 2)
    with pytest.raises(UsageError, match="partitions"):
        write_events(evs, tmp_path / "many", partition_by=("source",))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_a_failed_source_leaves_no_dataset(tmp_path):
    def batches():
        from theia_frames.protocol.arrow import events_to_batch

        yield events_to_batch(sample(10))
        raise tf.ConnectionClosed("dropped mid-query")

    with pytest.raises(tf.ConnectionClosed):
        write_events(batches(), tmp_path / "out", partition_by=("date",), batch_size=5)
    assert list(tmp_path.iterdir()) == []
