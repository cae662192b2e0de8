from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from theia_frames.frames.analysis import (
    SENSOR_PATTERN,
    bucket,
    explode_tags,
    extract,
    grep,
    tag_counts,
    tag_matrix,
    timeline,
)
from theia_frames.event import Event
from theia_frames.exceptions import UsageError
from theia_frames.frames.convert import to_dataframe

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


def ev(t, source="s", tags=(), content="", id=None):
    return Event(id=id or f"{source}@{t}", timestamp=t, source=source, tags=list(tags), content=content)


def frame(*events, **kw):
    return to_dataframe(list(events), progress=False, **kw)


def utc(text):
    return pd.Timestamp(text, tz="UTC")


@pytest.fixture
def sensors():
    return frame(
        ev(T0 + 0.1, "/dev/t1", ["sensor", "temp"], "21.5C"),
        ev(T0 + 0.6, "/dev/h1", ["sensor", "humidity"], "45.2%"),
        ev(T0 + 1.2, "/dev/t1", ["sensor", "temp"], "22.5C"),
        ev(T0 + 4.9, "/dev/t1", ["sensor", "temp"], "23.0C"),
        ev(T0 + 5.0, "/dev/door", [], "door opened"),
    )


# --------------------------------------------------------------------------- bucket


def test_bucket_counts_with_empty_buckets(sensors):
    out = bucket(sensors, "1s")
    assert list(out.columns) == ["count"]
    assert out["count"].tolist() == [2, 1, 0, 0, 1, 1]
    assert out.index[0] == utc("2023-11-14 22:13:20") and out.index[-1] == utc("2023-11-14 22:13:25")
    assert out.index.name == "bucket" and out["count"].dtype == np.int64


def test_bucket_per_source(sensors):
    out = bucket(sensors, "2s", by="source")
    assert list(out.columns) == ["/dev/door", "/dev/h1", "/dev/t1"]
    assert out.columns.name == "source"
    # buckets start at 22:13:20, :22, :24
    assert out.to_dict("list") == {"/dev/door": [0, 0, 1], "/dev/h1": [1, 0, 0], "/dev/t1": [2, 0, 1]}
    assert (out.dtypes == np.int64).all()


def test_bucket_per_tag_counts_each_tag_of_an_event(sensors):
    out = bucket(sensors, "5s", by="tag")
    assert out.to_dict("list") == {"humidity": [1, 0], "sensor": [4, 0], "temp": [3, 0]}


def test_bucket_aggregate_of_a_value_with_nan_for_empty_buckets(sensors):
    out = bucket(extract(sensors), "1s", value="value", agg="mean")
    assert list(out.columns) == ["value"]
    np.testing.assert_allclose(out["value"].to_numpy(), [(21.5 + 45.2) / 2, 22.5, np.nan, np.nan, 23.0, np.nan])
    summed = bucket(extract(sensors), "1s", value="value", agg="sum")
    np.testing.assert_allclose(summed["value"].to_numpy(), [66.7, 22.5, np.nan, np.nan, 23.0, np.nan])
    counted = bucket(extract(sensors), "1s", value="value", agg="count")
    assert counted["value"].tolist() == [2, 1, 0, 0, 1, 0]


def test_bucket_aggregate_per_source(sensors):
    out = bucket(extract(sensors), "2s", by="source", value="value", agg="max")
    assert out["/dev/t1"].tolist() == [22.5, None, 23.0] or np.allclose(
        out["/dev/t1"].to_numpy(), [22.5, np.nan, 23.0], equal_nan=True
    )
    assert np.isnan(out["/dev/door"].to_numpy()).all()  # "door opened" holds no number


def test_bucket_daily_in_berlin_across_the_autumn_dst_change():
    # Europe/Berlin: 2023-10-29 03:00 CEST -> 02:00 CET; that day has 25 hours.
    df = frame(
        ev(pd.Timestamp("2023-10-28T22:30Z").timestamp()),  # 00:30 CEST on the 29th
        ev(pd.Timestamp("2023-10-29T00:30Z").timestamp()),  # 02:30 CEST (first 02:30)
        ev(pd.Timestamp("2023-10-29T01:30Z").timestamp()),  # 02:30 CET (second 02:30)
        ev(pd.Timestamp("2023-10-29T22:59Z").timestamp()),  # 23:59 CET on the 29th
        ev(pd.Timestamp("2023-10-29T23:01Z").timestamp()),  # 00:01 CET on the 30th
    )
    out = bucket(df, "1D", tz="Europe/Berlin")
    assert out["count"].tolist() == [4, 1]
    assert out.index.tolist() == [
        pd.Timestamp("2023-10-29 00:00", tz="Europe/Berlin"),
        pd.Timestamp("2023-10-30 00:00", tz="Europe/Berlin"),
    ]
    assert out.index[1] - out.index[0] == pd.Timedelta(hours=25)
    # in UTC the same events fall on three days' buckets differently
    assert bucket(df, "1D")["count"].tolist() == [1, 4]


def test_bucket_hourly_in_berlin_keeps_both_two_oclock_hours():
    df = frame(
        ev(pd.Timestamp("2023-10-29T00:10Z").timestamp()),  # 02:10 CEST
        ev(pd.Timestamp("2023-10-29T00:50Z").timestamp()),  # 02:50 CEST
        ev(pd.Timestamp("2023-10-29T01:10Z").timestamp()),  # 02:10 CET
        ev(pd.Timestamp("2023-10-29T03:30Z").timestamp()),  # 04:30 CET
    )
    out = bucket(df, "1h", tz="Europe/Berlin")
    assert out["count"].tolist() == [2, 1, 0, 1]
    assert [t.strftime("%H:%M%z") for t in out.index] == ["02:00+0200", "02:00+0100", "03:00+0100", "04:00+0100"]


def test_bucket_daily_in_berlin_across_the_spring_dst_change_uses_the_frames_zone():
    # 2023-03-26 02:00 CET -> 03:00 CEST; that day has 23 hours.
    df = frame(
        ev(pd.Timestamp("2023-03-25T23:30Z").timestamp()),  # 00:30 CET on the 26th
        ev(pd.Timestamp("2023-03-26T21:59Z").timestamp()),  # 23:59 CEST on the 26th
        ev(pd.Timestamp("2023-03-26T22:01Z").timestamp()),  # 00:01 CEST on the 27th
        tz="Europe/Berlin",
    )
    out = bucket(df, "1D")
    assert out["count"].tolist() == [2, 1]
    assert out.index[1] - out.index[0] == pd.Timedelta(hours=23)


def test_bucket_works_on_a_timestamp_index(sensors):
    indexed = sensors.set_index("timestamp")
    pd.testing.assert_frame_equal(bucket(indexed, "1s"), bucket(sensors, "1s"))


def test_bucket_of_an_empty_frame():
    out = bucket(frame(), "1s")
    assert len(out) == 0 and list(out.columns) == ["count"]
    assert isinstance(out.index, pd.DatetimeIndex)
    assert len(bucket(frame(), "1s", by="source")) == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"freq": "often"}, "invalid bucket frequency"),
        ({"freq": "1s", "value": "nope"}, r"needs the column \['nope'\]"),
        ({"freq": "1s", "value": "content", "agg": "mean"}, "needs a numeric column"),
        ({"freq": "1s", "agg": "mean"}, "needs a value column"),
        ({"freq": "1s", "by": "nope"}, r"needs the column \['nope'\]"),
        ({"freq": "1s", "tz": "Mars/Olympus"}, "unknown time zone"),
    ],
)
def test_bucket_errors_name_the_problem(sensors, kwargs, message):
    with pytest.raises(UsageError, match=message):
        bucket(sensors, **kwargs)


def test_helpers_say_which_columns_they_need():
    plain = pd.DataFrame({"x": [1]})
    with pytest.raises(UsageError, match="needs a 'timestamp' column or a DatetimeIndex"):
        plain.theia.bucket("1s")
    with pytest.raises(UsageError, match=r"needs the column \['tags'\]"):
        plain.theia.explode_tags()
    with pytest.raises(UsageError, match=r"needs the column \['content'\]"):
        plain.theia.extract()
    with pytest.raises(UsageError, match=r"needs the column \['source'\]"):
        plain.theia.timeline()
    with pytest.raises(UsageError, match="takes a DataFrame"):
        bucket([1, 2], "1s")


# --------------------------------------------------------------------------- tags


def test_explode_tags_keeps_events_without_tags(sensors):
    out = explode_tags(sensors)
    assert list(out.columns) == ["timestamp", "source", "tag", "content", "id"]
    assert out.index.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4]
    assert out["tag"].tolist()[:8] == ["sensor", "temp", "sensor", "humidity", "sensor", "temp", "sensor", "temp"]
    assert pd.isna(out["tag"].iloc[8]) and out["content"].iloc[8] == "door opened"
    assert isinstance(out["tag"].dtype, pd.CategoricalDtype)
    assert out["timestamp"].dtype == sensors["timestamp"].dtype


def test_explode_tags_of_frames_without_any_tags_and_empty():
    out = explode_tags(frame(ev(1.0), ev(2.0)))
    assert len(out) == 2 and out["tag"].isna().all()
    assert len(explode_tags(frame())) == 0


def test_explode_tags_accepts_python_lists():
    df = pd.DataFrame({"id": ["a", "b", "c"], "tags": [["x", "y"], [], None]})
    out = explode_tags(df)
    assert out["id"].tolist() == ["a", "a", "b", "c"]
    assert out["tag"].tolist()[:2] == ["x", "y"] and out["tag"].isna().tolist()[2:] == [True, True]


def test_tag_matrix_and_counts(sensors):
    m = tag_matrix(sensors)
    assert list(m.columns) == ["humidity", "sensor", "temp"]
    assert m.index.equals(sensors.index)
    assert m["sensor"].tolist() == [True, True, True, True, False]
    assert m["temp"].tolist() == [True, False, True, True, False]
    assert (m.dtypes == bool).all()
    counts = tag_counts(sensors)
    assert counts["count"].to_dict() == {"sensor": 4, "temp": 3, "humidity": 1}
    assert list(counts.index) == ["sensor", "temp", "humidity"]
    assert len(tag_counts(frame())) == 0 and list(tag_matrix(frame()).columns) == []


# --------------------------------------------------------------------------- extract


def test_extract_sensor_readings_from_mixed_content():
    df = frame(
        ev(1, content="21.5C"),
        ev(2, content="45.2%"),
        ev(3, content="1013.2hPa"),
        ev(4, content=" -3.5 °C "),
        ev(5, content="door opened"),
        ev(6, content=""),
        ev(7, content="42"),
        ev(8, content="1e3 lux"),
    )
    out = extract(df)
    assert out["value"].dtype == np.float64
    np.testing.assert_allclose(out["value"].to_numpy(), [21.5, 45.2, 1013.2, -3.5, np.nan, np.nan, 42, 1000])
    assert out["unit"].tolist()[:4] == ["C", "%", "hPa", "°C"]
    assert out["unit"].isna().tolist() == [False, False, False, False, True, True, True, False]
    assert out["unit"].dtype == pd.StringDtype("pyarrow")
    assert list(out.columns) == ["timestamp", "source", "tags", "content", "id", "value", "unit"]


def test_extract_with_a_custom_pattern_types_each_group():
    df = frame(ev(1, content="cpu=87 host=a"), ev(2, content="cpu=12 host=b"), ev(3, content="boot"))
    out = extract(df, r"cpu=(?P<cpu>\d+) host=(?P<host>\w+)")
    assert out["cpu"].dtype == np.float64 and out["cpu"].tolist()[:2] == [87.0, 12.0]
    assert out["host"].tolist()[:2] == ["a", "b"] and pd.isna(out["host"].iloc[2])
    by_source = extract(frame(ev(1, source="/dev/temp-7")), r"-(?P<n>\d+)$", column="source")
    assert by_source["n"].tolist() == [7.0]


@pytest.mark.parametrize(
    "pattern, message",
    [(r"(\d+)", "named groups"), (r"(?P<source>.+)", "overwrite"), (r"(?P<x>", "not a valid regular expression")],
)
def test_extract_errors(pattern, message):
    with pytest.raises(UsageError, match=message):
        extract(frame(ev(1, content="1")), pattern)


def test_sensor_pattern_is_exported():
    import re

    m = re.match(SENSOR_PATTERN, "21.5C")
    assert m and m["value"] == "21.5" and m["unit"] == "C"


# --------------------------------------------------------------------------- forensics


@pytest.fixture
def log():
    rows = [
        (0, "/var/log/app", "boot"),
        (8, "/var/log/db", "slow query"),
        (9, "/var/log/app", "disk warn"),
        (10, "/var/log/app", "disk FAIL"),
        (11, "/var/log/db", "retry"),
        (14, "/var/log/app", "disk fail again"),
        (30, "/var/log/app", "ok"),
    ]
    return frame(*[ev(T0 + t, s, content=c, id=str(i)) for i, (t, s, c) in enumerate(rows)])


def test_grep_without_context_returns_only_matches(log):
    out = grep(log, "FAIL")
    assert out["id"].tolist() == ["3"] and out["match"].tolist() == [True]
    assert grep(log, "fail", case=False)["id"].tolist() == ["3", "5"]


def test_grep_with_context_marks_matches_and_context(log):
    out = grep(log, "FAIL", context="2s")
    assert out["id"].tolist() == ["1", "2", "3", "4"]
    assert out["match"].tolist() == [False, False, True, False]
    assert out.index.tolist() == [1, 2, 3, 4]


def test_grep_before_and_after_on_their_own(log):
    assert grep(log, "FAIL", before="1s")["id"].tolist() == ["2", "3"]
    assert grep(log, "FAIL", after=pd.Timedelta(seconds=1))["id"].tolist() == ["3", "4"]
    assert grep(log, "FAIL", context="10s", after="0s")["id"].tolist() == ["0", "1", "2", "3"]


def test_grep_context_windows_of_several_matches_merge(log):
    out = grep(log, "(?i)fail", context="3s")
    assert out["id"].tolist() == ["1", "2", "3", "4", "5"]
    assert out["match"].tolist() == [False, False, True, False, True]


def test_grep_context_from_the_same_source_only(log):
    out = grep(log, "FAIL", context="2s", same_source=True)
    assert out["id"].tolist() == ["2", "3"]


def test_grep_on_the_source_column(log):
    out = grep(log, r"db$", column="source", context="1s")
    assert out["id"].tolist() == ["1", "2", "3", "4"]
    assert out["match"].tolist() == [True, False, False, True]


def test_grep_on_an_unsorted_frame_and_a_timestamp_index(log):
    shuffled = log.iloc[[6, 3, 0, 5, 2, 4, 1]]
    out = grep(shuffled, "FAIL", context="2s")
    assert sorted(out["id"]) == ["1", "2", "3", "4"]
    assert out.index.tolist() == [3, 2, 4, 1]  # the input's order is kept
    indexed = grep(log.set_index("timestamp"), "FAIL", context="2s")
    assert indexed["id"].tolist() == ["1", "2", "3", "4"]


def test_grep_errors(log):
    with pytest.raises(UsageError, match="not a valid regular expression"):
        grep(log, "(")
    with pytest.raises(UsageError, match="invalid before 'soon': expected seconds"):
        grep(log, "x", context="soon")
    with pytest.raises(UsageError, match="must not be negative"):
        grep(log, "x", before="-1s")
    assert len(grep(frame(), "x", context="1s")) == 0


def test_timeline_per_source(log):
    out = timeline(log)
    assert list(out.index) == ["/var/log/app", "/var/log/db"]
    app = out.loc["/var/log/app"]
    assert app["first"] == pd.Timestamp(T0, unit="s", tz="UTC")
    assert app["last"] == pd.Timestamp(T0 + 30, unit="s", tz="UTC")
    assert app["count"] == 5 and app["span"] == pd.Timedelta(seconds=30)
    assert app["rate"] == pytest.approx(4 / 30)
    assert app["max_gap"] == pd.Timedelta(seconds=16)
    # intervals 9, 1, 4, 16: median 6.5, so none is longer than ten times it
    assert app["gaps"] == 0
    assert timeline(log, gap="5s").loc["/var/log/app", "gaps"] == 2
    db = out.loc["/var/log/db"]
    assert db["count"] == 2 and db["rate"] == pytest.approx(1 / 3)
    assert out["first"].dtype == "datetime64[ns, UTC]"
    assert str(timeline(log.assign(timestamp=log["timestamp"].dt.tz_convert("Asia/Tokyo")))["first"].dt.tz) == "Asia/Tokyo"
    assert len(timeline(frame())) == 0


# --------------------------------------------------------------------------- no mutation, accessor


def test_helpers_never_change_their_input(sensors, log):
    calls = [
        (sensors, lambda d: bucket(d, "1s", by="source")),
        (sensors, lambda d: bucket(d, "1s", by="tag", tz="Europe/Berlin")),
        (sensors, explode_tags),
        (sensors, tag_matrix),
        (sensors, tag_counts),
        (sensors, extract),
        (log, lambda d: grep(d, "FAIL", context="3s", same_source=True)),
        (log, timeline),
    ]
    for df, call in calls:
        before = df.copy(deep=True)
        result = call(df)
        assert result is not df
        pd.testing.assert_frame_equal(df, before)


def test_accessor_gives_the_same_results(sensors, log):
    pd.testing.assert_frame_equal(sensors.theia.bucket("1s", by="source"), bucket(sensors, "1s", by="source"))
    pd.testing.assert_frame_equal(sensors.theia.explode_tags(), explode_tags(sensors))
    pd.testing.assert_frame_equal(sensors.theia.tag_matrix(), tag_matrix(sensors))
    pd.testing.assert_frame_equal(sensors.theia.tag_counts(), tag_counts(sensors))
    pd.testing.assert_frame_equal(sensors.theia.extract(), extract(sensors))
    pd.testing.assert_frame_equal(log.theia.grep("FAIL", context="2s"), grep(log, "FAIL", context="2s"))
    pd.testing.assert_frame_equal(log.theia.timeline(gap="5s"), timeline(log, gap="5s"))


def test_bucket_refuses_far_more_buckets_than_events() -> None:
    # one event stamped far from the rest: the README's 1,608,715 rows, scaled down
    events = [Event(id=str(i), timestamp=1_700_000_000.0 + i, source="a") for i in range(50)]
    events.append(Event(id="late", timestamp=1_700_000_000.0 + 400_000, source="b"))
    df = to_dataframe(events)
    with pytest.raises(UsageError, match=r"would make 400,001 buckets for 51 event\(s\).*max_buckets=None"):
        bucket(df, "1s", by="source")
    laid_out = bucket(df, "1s", by="source", max_buckets=None)
    assert len(laid_out) == 400_001 and int(laid_out.to_numpy().sum()) == 51
    assert len(bucket(df, "1h")) == 112  # coarser: allowed
    with pytest.raises(UsageError, match="more than 100"):
        bucket(df, "1h", max_buckets=100)
    with pytest.raises(UsageError, match=r"would make \d+ buckets"):
        bucket(df, "MS", max_buckets=0)  # a calendar frequency is checked once laid out


@pytest.mark.parametrize("freq", ["W", "W-MON", "MS", "ME", "QS", "YE"])
def test_calendar_buckets_start_where_their_events_are_and_a_count_lays_out_the_same(freq):
    from theia_frames.frames.analysis import count_frame, count_grain
    from theia_frames.protocol.arrow import events_to_batch
    from theia_frames.protocol.count import Counter

    events = [Event(id=str(i), timestamp=1_700_000_000 + i * 86_400 * 3.3, source=f"s{i % 2}") for i in range(40)]
    df = to_dataframe(events)
    counts = bucket(df, freq)
    assert counts["count"].sum() == len(events)
    # each bucket starts at or before its first event, and the next one after its last
    starts = counts.index
    assert starts[0] <= df.timestamp.min() and (len(starts) == 1 or starts[1] > df.timestamp.min())
    for by in (None, "source"):
        counter = Counter(grain=count_grain(freq), by=by)
        counter.add(events_to_batch(events))
        assert count_frame(counter.result(), freq).equals(bucket(df, freq, by=by))


def test_the_accessor_passes_bucket_options_on():
    df = to_dataframe([Event(id="a", timestamp=1.0), Event(id="b", timestamp=1_700_000_000.0)])
    with pytest.raises(UsageError, match="max_buckets=None"):
        df.theia.bucket("1min")
    assert df.theia.bucket("1min", max_buckets=None)["count"].sum() == 2


def test_timeline_gaps_mean_silences_on_a_log_written_to_the_second():
    # five events in each of 20 consecutive seconds, a minute of silence, then 20 more seconds
    seconds = [*range(20), *range(80, 100)]
    df = to_dataframe([Event(id=f"{s}-{k}", timestamp=1_700_000_000.0 + s, source="ssh") for s in seconds for k in range(5)])
    row = timeline(df).loc["ssh"]
    assert row["count"] == 200 and row["gaps"] == 1 and row["max_gap"] == pd.Timedelta(seconds=61)
