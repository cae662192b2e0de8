"""frames.export: events to Parquet, CSV and JSON Lines (and partitioned datasets) with write_events, and back with read_events."""

from __future__ import annotations

import json
import os

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from theia_frames.frames import export
from theia_frames.frames.analysis import extract
from theia_frames.protocol.arrow import events_to_batch
from theia_frames.event import Event
from theia_frames.exceptions import UsageError
from theia_frames.frames.export import format_for, read_events, write_events
from theia_frames.frames.convert import EVENT_DTYPES, to_dataframe

FORMATS = ["parquet", "csv", "jsonl"]


def sample(n=7):
    return [
        Event(
            id=f"id-{i}",
            timestamp=1_700_000_000.123456 + i * 0.5,
            source=["/dev/sensors/temp-1", "/var/log/a:b", "ü"][i % 3],
            tags=[["sensor", "temp", "site-a"], [], ["x"]][i % 3],
            content=["21.5C", 'multi\nline "quoted", text', "", "∑ ünïcode\r\n"][i % 4],
        )
        for i in range(n)
    ]


class FakeResult:
    def __init__(self, batches):
        self.batches = batches
        self.pulled = 0

    def iter_batches(self):
        for b in self.batches:
            self.pulled += 1
            yield b


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("n", [0, 1, 7])
def test_round_trip(tmp_path, fmt, n):
    evs = sample(n)
    path = tmp_path / f"events.{fmt}"
    assert write_events(evs, path, batch_size=3) == n
    back = read_events(path)
    pd.testing.assert_frame_equal(back, to_dataframe(evs))
    for c, dtype in EVENT_DTYPES.items():
        assert back[c].dtype == dtype


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_find_result_is_written_in_chunks(tmp_path, fmt, monkeypatch):
    batches = [events_to_batch(sample(7)[i : i + 2]) for i in range(0, 7, 2)]
    result = FakeResult(batches)
    sink = export._SINKS[fmt]
    seen = []
    real_write = sink.write

    def spy(self, table):
        seen.append((table.num_rows, result.pulled))
        return real_write(self, table)

    monkeypatch.setattr(sink, "write", spy)
    path = tmp_path / f"out.{fmt}"
    assert write_events(result, path, batch_size=3) == 7
    # each chunk is written before the rest of the result is read
    assert [rows for rows, _ in seen] == [3, 3, 1]
    assert [pulled for _, pulled in seen] == [2, 3, 4]
    pd.testing.assert_frame_equal(read_events(path), to_dataframe(sample(7)))


def test_parquet_layout_is_plain_for_other_readers(tmp_path):
    path = tmp_path / "e.parquet"
    write_events(sample(5), path, batch_size=2)
    f = pq.ParquetFile(path)
    assert f.metadata.num_row_groups == 3
    schema = f.schema_arrow
    assert schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
    assert schema.field("tags").type == pa.list_(pa.string())
    assert schema.field("source").type == pa.string()
    plain = pd.read_parquet(path)
    assert plain["id"].tolist() == [f"id-{i}" for i in range(5)]


def test_csv_and_jsonl_layouts(tmp_path):
    evs = sample(3)
    write_events(evs, tmp_path / "e.csv")
    text = (tmp_path / "e.csv").read_text(encoding="utf-8")
    assert text.splitlines()[0] == '"timestamp","source","tags","content","id"'
    assert '"2023-11-14T22:13:20.123456Z"' in text and '"sensor,temp,site-a"' in text
    plain = pd.read_csv(tmp_path / "e.csv", keep_default_na=False)
    assert plain["content"].tolist() == [e.content for e in evs]

    write_events(evs, tmp_path / "e.jsonl")
    lines = (tmp_path / "e.jsonl").read_text(encoding="utf-8").splitlines()
    first = json.loads(lines[0])
    assert first == {"id": "id-0", "timestamp": "2023-11-14T22:13:20.123456Z", "source": "/dev/sensors/temp-1",
                     "tags": ["sensor", "temp", "site-a"], "content": "21.5C"}
    assert len(lines) == 3 and json.loads(lines[1])["tags"] == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_dataframe_with_extra_columns_is_written(tmp_path, fmt):
    df = extract(to_dataframe(sample(4), tz="Europe/Berlin"))
    path = tmp_path / f"x.{fmt}"
    assert write_events(df, path, batch_size=3) == 4
    back = read_events(path)
    assert back["timestamp"].tolist() == df["timestamp"].dt.tz_convert("UTC").tolist()
    assert back["value"].tolist()[0] == 21.5
    assert back["unit"].tolist()[0] == "C"
    indexed = to_dataframe(sample(2), index="timestamp")
    write_events(indexed, tmp_path / f"i.{fmt}")
    pd.testing.assert_frame_equal(read_events(tmp_path / f"i.{fmt}"), to_dataframe(sample(2)))


def test_a_failed_write_leaves_no_file(tmp_path):
    def broken():
        yield from sample(3)
        raise ConnectionError("dropped")

    path = tmp_path / "e.parquet"
    with pytest.raises(ConnectionError):
        write_events(broken(), path, batch_size=2)
    assert list(tmp_path.iterdir()) == []


def test_format_and_argument_errors(tmp_path):
    assert format_for("a.PARQUET") == "parquet" and format_for("a", "JSONL") == "jsonl"
    with pytest.raises(UsageError, match="cannot tell the format"):
        write_events(sample(1), tmp_path / "e.xlsx")
    with pytest.raises(UsageError, match="unknown export format"):
        write_events(sample(1), tmp_path / "e.parquet", format="xml")
    with pytest.raises(UsageError, match="batch_size"):
        write_events(sample(1), tmp_path / "e.csv", batch_size=0)
    with pytest.raises(UsageError, match="no folder"):
        write_events(sample(1), tmp_path / "nope" / "e.csv")
    with pytest.raises(UsageError, match="no such file"):
        read_events(tmp_path / "missing.csv")


_events = st.lists(
    st.builds(
        Event,
        id=st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=6),
        timestamp=st.floats(min_value=0, max_value=4e9, allow_nan=False),
        source=st.sampled_from(["a", "/dev/b", "c:d"]),
        tags=st.lists(st.text(alphabet="abcxyz-", min_size=1, max_size=4), max_size=3),
        content=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=15),
    ),
    max_size=12,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_events, st.sampled_from(FORMATS), st.integers(min_value=1, max_value=5))
def test_round_trip_property(tmp_path, evs, fmt, chunk):
    path = tmp_path / f"p.{fmt}"
    assert write_events(evs, path, batch_size=chunk) == len(evs)
    pd.testing.assert_frame_equal(read_events(path), to_dataframe(evs))


# --------------------------------------------------------------------------- one writer, the user's umask


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_stream_writer_writes_what_the_file_export_writes(tmp_path, fmt):
    import io

    events = sample(9)
    out = io.BytesIO()
    with export.EventWriter(out, fmt) as writer:
        batch = events_to_batch(events)
        writer.write(batch.slice(0, 4))
        writer.write(pa.Table.from_batches([batch.slice(4)]))
    assert writer.count == 9
    write_events(events, tmp_path / f"e.{fmt}")
    if fmt == "parquet":
        assert pq.read_table(io.BytesIO(out.getvalue())).equals(pq.read_table(tmp_path / f"e.{fmt}"))
    else:
        assert out.getvalue() == (tmp_path / f"e.{fmt}").read_bytes()


def test_the_stream_writer_of_no_events_still_writes_a_valid_output():
    import io

    out = io.BytesIO()
    export.EventWriter(out, "csv").close()
    assert out.getvalue() == b'"timestamp","source","tags","content","id"\n'
    with pytest.raises(UsageError, match="unknown export format"):
        export.EventWriter(io.BytesIO(), "xlsx")


def test_format_errors_name_the_callers_option():
    with pytest.raises(UsageError, match=r"or give format= \(csv, jsonl, parquet\)"):
        format_for("events.xlsx")
    with pytest.raises(UsageError, match=r"or give --format \(csv, jsonl, parquet\)"):
        format_for("events.xlsx", option="--format")


@pytest.mark.skipif(not hasattr(os, "umask") or os.name == "nt", reason="POSIX file modes")
@pytest.mark.parametrize("fmt", FORMATS)
def test_written_files_follow_the_umask(tmp_path, fmt):
    old = os.umask(0o022)
    try:
        write_events(sample(2), tmp_path / f"e.{fmt}")
        write_events(to_dataframe(sample(2)), tmp_path / f"f.{fmt}")
    finally:
        os.umask(old)
    for name in (f"e.{fmt}", f"f.{fmt}"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"e.{fmt}", f"f.{fmt}"]  # no part file left
