"""The way back in: DataFrames, Arrow tables and Polars frames through ``Client.send_many``."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from theia_frames.protocol import outgoing as client_module
from theia_frames.protocol.arrow import event_schema
from theia_frames.client import Client
from theia_frames.server.collector import serve
from theia_frames.event import Event
from theia_frames.exceptions import InvalidEventError, MissingDependencyError, UsageError
from theia_frames.filter import Filter
from theia_frames.frames.convert import to_dataframe
from theia_frames.frames.events_table import to_event_table
from theia_frames.simulation import sensor_events

BASE = 1_700_000_000.0


def stored(url, **options):
    with Client(url) as client:
        df = to_dataframe(client.find(Filter(0).order_asc(), **options), progress=False)
    return df.sort_values(["timestamp", "id"], kind="stable", ignore_index=True)


def test_a_found_frame_sent_to_another_collector_is_found_equal(collector, sender):
    events = list(sensor_events(2_000, sources=5, start=BASE, rate=500, seed=3))
    events[7].tags = []  # an event without tags, too
    events[8].source = ""
    sender.send_many(events, wait=True)
    original = stored(collector.url)
    assert len(original) == 2_000
    with serve(db=":memory:", port=0) as second:
        with Client(second.url) as client:
            assert client.send_many(original, wait=True) == 2_000
        pd.testing.assert_frame_equal(stored(second.url), original)


def test_a_frame_indexed_by_time_in_another_zone_round_trips(collector, sender):
    sender.send_many([Event(id=f"e{i}", timestamp=BASE + i * 0.25, tags=["a", "b"], content=str(i)) for i in range(50)],
                     wait=True)
    original = stored(collector.url)
    indexed = original.set_index("timestamp").tz_convert("Europe/Berlin")
    with serve(db=":memory:", port=0) as second:
        with Client(second.url) as client:
            client.send_many(indexed, wait=True)
        pd.testing.assert_frame_equal(stored(second.url), original)


def test_a_users_own_frame_with_a_column_mapping_and_defaults(collector):
    frame = pd.DataFrame(
        {
            "time": pd.to_datetime(["2024-05-01 00:00:00", "2024-05-01 00:00:01", "2024-05-01 00:00:02"]),  # naive: UTC
            "message": ["21.5C", "door opened", 7],
            "host": ["/dev/t", "/dev/door", None],
            "labels": [["sensor", "temp"], "home, door", None],
            "other": [1, 2, 3],
        }
    )
    with Client(collector.url) as client:
        sent = client.send_many(frame, columns={"timestamp": "time", "content": "message", "source": "host", "tags": "labels"},
                                wait=True)
    assert sent == 3
    df = stored(collector.url)
    assert df["timestamp"].tolist() == list(pd.to_datetime(["2024-05-01 00:00:00", "2024-05-01 00:00:01",
                                                            "2024-05-01 00:00:02"]).tz_localize("UTC"))
    assert df["content"].tolist() == ["21.5C", "door opened", "7"]
    assert df["source"].astype(str).tolist() == ["/dev/t", "/dev/door", ""]
    assert df["tags"].tolist() == [["sensor", "temp"], ["home", "door"], []]
    assert df["id"].str.len().tolist() == [36, 36, 36]  # generated
    assert df["id"].nunique() == 3


def test_a_frame_with_only_times_and_content():
    frame = pd.DataFrame({"content": ["a", "b"]}, index=pd.to_datetime([BASE, BASE + 1], unit="s"))
    table = to_event_table(frame)
    assert table.schema.equals(event_schema())
    assert table.column("timestamp").to_pylist() == [BASE, BASE + 1]
    assert table.column("source").to_pylist() == ["", ""]
    assert table.column("tags").to_pylist() == [[], []]
    numbers = to_event_table(pd.DataFrame({"timestamp": [BASE, np.int64(BASE) + 2], "content": ["x", "y"]}))
    assert numbers.column("timestamp").to_pylist() == [BASE, BASE + 2]
    iso = to_event_table(pd.DataFrame({"timestamp": ["2024-05-01T00:00Z", "2024-05-01T02:00+02:00"]}))
    assert iso.column("timestamp").to_pylist() == [1714521600.0, 1714521600.0]


def test_arrow_tables_of_both_layouts(collector):
    with Client(collector.url) as client:
        wire = pa.Table.from_pylist([{"id": "w", "timestamp": BASE, "source": "s", "tags": ["a", "b"], "content": "c"}],
                                    schema=event_schema())
        assert to_event_table(wire) is wire  # already the event batch: sent as it is
        assert client.send_many(wire) == 1
        frame_like = pa.Table.from_pandas(to_dataframe([Event(id="f", timestamp=BASE + 1, tags=["x"], content="d")]))
        assert client.send_many(frame_like, wait=True) == 1
        text = pa.schema([(n, pa.float64() if n == "timestamp" else pa.string()) for n in event_schema().names])
        comma_text = pa.Table.from_pylist(
            [{"id": "t", "timestamp": BASE + 2, "source": "s", "tags": "y,z", "content": "e"}], schema=text
        )
        assert client.send_many(comma_text, wait=True) == 1
    df = stored(collector.url)
    assert df["id"].tolist() == ["w", "f", "t"]
    assert df["tags"].tolist() == [["a", "b"], ["x"], ["y", "z"]]


def test_a_polars_frame(collector):
    pl = pytest.importorskip("polars")
    frame = pl.DataFrame(
        {
            "timestamp": [pd.Timestamp(BASE, unit="s").to_pydatetime(), pd.Timestamp(BASE + 1.5, unit="s").to_pydatetime()],
            "tags": [["a"], []],
            "content": ["one", "two"],
            "id": ["p1", None],
        }
    )
    with Client(collector.url) as client:
        assert client.send_many(frame, wait=True) == 2
        assert client.send_many(frame.lazy().with_columns(pl.lit("q").alias("id")), wait=True) == 2
    df = stored(collector.url)
    assert df["content"].tolist() == ["one", "one", "two", "two"]
    assert df["tags"].tolist() == [["a"], ["a"], [], []]
    assert "p1" in df["id"].tolist() and "q" in df["id"].tolist()


def test_a_polars_frame_without_polars_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "polars", None)
    fake = type("DataFrame", (), {"__module__": "polars.dataframe.frame", "columns": ["x"]})()
    with pytest.raises(MissingDependencyError, match=r"theia-frames\[polars\]"):
        to_event_table(fake)


@pytest.mark.parametrize(
    "frame, columns, error, words",
    [
        (pd.DataFrame({"content": ["x"]}), None, UsageError, "events need a time: a 'timestamp' column or a DatetimeIndex"),
        (pd.DataFrame({"timestamp": [BASE]}), {"content": "message"}, UsageError, "maps 'content' to 'message'"),
        (pd.DataFrame({"timestamp": [BASE]}), {"colour": "x"}, UsageError, "unknown event fields"),
        (pd.DataFrame({"timestamp": [BASE, np.nan]}), None, InvalidEventError, "missing or not finite in row 1"),
        (pd.DataFrame({"timestamp": pd.to_datetime([BASE, None], unit="s")}), None, InvalidEventError, "row 1"),
        (pd.DataFrame({"timestamp": ["soon"]}), None, UsageError, "must hold datetimes"),
        (pd.DataFrame({"timestamp": [BASE], "tags": [["a,b"]]}), None, InvalidEventError, "must not contain a comma"),
        (pd.DataFrame({"timestamp": [BASE], "tags": [{"a": 1}]}), None, UsageError, "lists of tags or comma text"),
        (pd.DataFrame({"timestamp": [BASE], "source": ["a\nb"]}), None, InvalidEventError, "line break"),
    ],
)
def test_bad_frames_are_refused_before_anything_is_sent(collector, frame, columns, error, words):
    with Client(collector.url) as client:
        client.send(Event(id="kept", timestamp=BASE + 100))
        with pytest.raises(error, match=words):
            client.send_many(frame, columns=columns)
        client.flush()
    assert stored(collector.url)["id"].tolist() == ["kept"]


def test_large_arrow_data_goes_out_in_messages_the_collector_takes(monkeypatch):
    # scaled down: 64 KiB messages against a collector that takes at most 256 KiB
    monkeypatch.setattr(client_module, "SEND_BATCH_BYTES", 64 * 1024)
    frame = pd.DataFrame({"timestamp": BASE + np.arange(400) * 0.01, "content": ["x" * 2000] * 400})
    with serve(db=":memory:", port=0, max_message_size=256 * 1024) as collector:
        with Client(collector.url) as client:
            assert client.send_many(frame, wait=True) == 400
        assert len(stored(collector.url)) == 400


def sent_messages(monkeypatch) -> list[int]:
    """The sizes of the binary messages the sync client sends from now on."""
    from theia_frames.client.transport import Connection

    sizes: list[int] = []
    send = Connection.send_binaries

    def counting(self, payloads):
        sizes.extend(len(p) for p in payloads)
        return send(self, payloads)

    monkeypatch.setattr(Connection, "send_binaries", counting)
    return sizes


def test_each_batch_carries_only_the_sources_it_uses(monkeypatch):
    """400,000 distinct sources in one send_many: each message holds its own rows'
    sources, the bytes sent stay close to the data's, and everything is stored."""
    n = 400_000
    table = pa.table(
        {
            "id": pa.array([f"e{i}" for i in range(n)]),
            "timestamp": BASE + np.arange(n) * 0.001,
            "source": pa.array([f"/dev/sensor/{i:07d}" for i in range(n)]).dictionary_encode(),
            "tags": pa.array([["t"]] * n, pa.list_(pa.string())),
            "content": pa.array(["21.5C"] * n),
        },
        schema=event_schema(),
    )
    data = sum(len(f"e{i}") + 8 + len(f"/dev/sensor/{i:07d}") + 1 + 5 for i in range(n))
    limit = 1024 * 1024  # a collector taking at most 1 MiB per message
    monkeypatch.setattr(client_module, "SEND_BATCH_BYTES", limit // 2)
    sizes = sent_messages(monkeypatch)
    with serve(db=":memory:", port=0, max_message_size=limit) as collector:
        with Client(collector.url) as client:
            assert client.send_many(table, wait=True) == n
        assert collector.store.count() == n
        with Client(collector.url) as client:
            sources = client.find(Filter(0).order_asc()).to_arrow(progress=False).column("source")
        assert sources.to_pylist() == table.column("source").to_pylist()
    assert len(sizes) >= n // 10_000 and max(sizes) <= limit // 2 + 4096
    # the offsets of each value, the timestamps and the source indices besides the text
    assert data < sum(sizes) < 2 * data


def test_a_batch_with_every_source_of_its_table_is_sent_as_it_is():
    table = pa.table(
        {"id": ["a", "b"], "timestamp": [1.0, 2.0], "source": pa.array(["/s", "/t"]).dictionary_encode(),
         "tags": [[], []], "content": ["x", "y"]},
        schema=event_schema(),
    )
    batch = table.to_batches()[0]
    assert client_module.used_sources(batch) is batch
    piece = client_module.used_sources(batch.slice(1, 1))
    assert piece.column("source").dictionary.to_pylist() == ["/t"] and piece.column("source").to_pylist() == ["/t"]


def test_many_small_events_in_one_batch_stay_under_the_message_limit(monkeypatch):
    """The offsets and indices count too: a batch of many tiny events is cut by them."""
    n = 200_000
    limit = 1024 * 1024
    monkeypatch.setattr(client_module, "SEND_BATCH_BYTES", limit // 2)
    frame = pd.DataFrame({"timestamp": BASE + np.arange(n) * 0.001, "content": ["x"] * n, "id": [str(i) for i in range(n)]})
    sizes = sent_messages(monkeypatch)
    with serve(db=":memory:", port=0, max_message_size=limit) as collector:
        with Client(collector.url, batch_size=n) as client:
            assert client.send_many(frame, wait=True) == n
        assert collector.store.count() == n
    assert max(sizes) <= limit // 2 + 4096
