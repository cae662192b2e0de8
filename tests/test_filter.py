from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from theia_frames.event import Event
from theia_frames.exceptions import InvalidFilterError
from theia_frames.filter import EventFilter, Filter
from theia_frames.timeparse import EARLIEST_EVENT_TIME, frame_micros


def ev(ts=10.0, tags=("sensor", "temp-1"), content="21.5C", id="e", source="/dev/t"):
    return Event(id=id, timestamp=ts, source=source, tags=list(tags), content=content)


def test_builders_mirror_go_and_return_copies():
    base = Filter(5)
    f = base.match_tag("sensor").match_tag("temp.+").match_content(r"\d+C").match_end(20).order_desc()
    assert base.tags == () and base.order is None
    assert f == EventFilter(start=5, end=20, tags=("sensor", "temp.+"), content=r"\d+C", order="desc")
    assert f.order_asc().order == "asc"


MAY_1 = 1714521600.0


@pytest.mark.parametrize(
    "value",
    [
        MAY_1,
        int(MAY_1),
        np.int64(MAY_1),
        np.float64(MAY_1),
        np.int32(1714521600),
        dt.datetime(2024, 5, 1),  # naive: UTC
        dt.datetime(2024, 5, 1, 2, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        dt.date(2024, 5, 1),
        pd.Timestamp("2024-05-01"),
        pd.Timestamp("2024-05-01T02:00", tz="Europe/Berlin"),
        np.datetime64("2024-05-01T00:00:00"),
        np.datetime64("2024-05-01"),
        "2024-05-01T00:00Z",
        "2024-05-01",
        "1714521600",
    ],
    ids=repr,
)
def test_times_are_taken_as_a_pandas_user_writes_them(value):
    f = EventFilter(start=value, end=value)
    # seconds as they are; a calendar time at a frame's precision: the float seconds a frame shows as it
    assert f.start <= MAY_1 <= f.end and f.end - f.start < 1e-6
    assert frame_micros(f.start) == frame_micros(f.end) == int(MAY_1) * 1_000_000
    if isinstance(value, (int, float, np.number)) or value == "1714521600":
        assert f.start == f.end == MAY_1
    assert Filter(value).start == Filter().match_start(value).start == f.start
    assert Filter(0).match_end(value).end == f.end
    assert type(f.start) is float


def test_relative_times_resolve_when_the_filter_is_built():
    import time

    before = time.time()
    f = Filter("-15m").match_end("-10min")
    after = time.time()
    assert before - 900 <= f.start <= after - 900
    assert before - 600 <= f.end <= after - 600
    # the wire form stays float seconds
    assert json.loads(f.to_json()) == {"start": f.start, "end": f.end}


def test_the_json_form_takes_only_numbers():
    with pytest.raises(InvalidFilterError, match="start must be a number of seconds"):
        EventFilter.from_dict({"start": "-15m"})
    with pytest.raises(InvalidFilterError, match="end must be a number of seconds"):
        EventFilter.from_json('{"end": "2024-05-01"}')
    with pytest.raises(InvalidFilterError, match="start must be a number of seconds"):
        EventFilter.from_json('{"start": true}')


def test_json_omits_empty_fields():
    assert Filter().to_json() == "{}"
    assert Filter(0).to_dict() == {}
    f = Filter(1.5).match_tag("a").match_end(2)
    assert json.loads(f.to_json()) == {"start": 1.5, "end": 2.0, "tags": ["a"]}
    assert EventFilter.from_json(f.to_json()) == f


def test_time_bounds_are_inclusive():
    f = Filter(10).match_end(20)
    assert f.matches(ev(ts=10)) and f.matches(ev(ts=20))
    assert not f.matches(ev(ts=9.999)) and not f.matches(ev(ts=20.001))


def test_every_tag_pattern_fully_matches_some_tag():
    assert Filter().match_tag("sensor", "temp.+").matches(ev())
    assert not Filter().match_tag("temp").matches(ev())  # full match, not prefix
    assert not Filter().match_tag("sensor", "humidity").matches(ev())
    assert not Filter().match_tag("sensor").matches(ev(tags=()))


def test_content_pattern_is_searched_anywhere():
    assert Filter().match_content(r"\.5C").matches(ev())
    assert Filter().match_content("^21").matches(ev())
    assert not Filter().match_content("F$").matches(ev())


def test_id_and_source_fully_match():
    assert Filter().match_source("/dev/.*").matches(ev())
    assert not Filter().match_source("/dev").matches(ev())
    assert Filter().match_id("e").matches(ev())


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"start": 10, "end": 5}, "before start"),
        ({"content": "("}, "not a valid regular expression"),
        ({"tags": ("[",)}, "not a valid regular expression"),
        ({"order": "sideways"}, "order must be 'asc' or 'desc'"),
        ({"start": "yesterday"}, "invalid filter start 'yesterday': expected seconds"),
        ({"start": True}, "invalid filter start True"),
        ({"start": float("nan")}, "invalid filter start nan: not a finite number"),
        ({"end": pd.NaT}, "invalid filter end NaT"),
        ({"start": "2024-05-02", "end": dt.datetime(2024, 5, 1)}, "before start"),
        ({"end": float("inf")}, "finite"),
        ({"tags": "sensor"}, "tags must be a list"),
    ],
)
def test_bad_values_fail_when_built(kwargs, words):
    with pytest.raises(InvalidFilterError, match=words):
        EventFilter(**kwargs)


@pytest.mark.parametrize(
    "text, words",
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"start": 1, "colour": "red"}', "unknown filter key"),
        ('{"start": "1"}', "start must be a number"),
        ('{"tags": [1]}', "tags must be a list of strings"),
        ('{"tags": "a"}', "tags must be a list of strings"),
        ('{"content": 5}', "content must be a string"),
    ],
)
def test_from_json_names_the_problem(text, words):
    with pytest.raises(InvalidFilterError, match=words):
        EventFilter.from_json(text)


def test_peer_forms():
    # upstream /find rejects a missing or zero start: the earliest accepted event time means none
    assert Filter().for_find()["start"] == EARLIEST_EVENT_TIME
    assert Filter(7.5).for_find()["start"] == 7.5
    # upstream /live wants integers and no order
    live = Filter(7.9).match_end(8.1).order_desc().for_live()
    assert live == {"start": 7, "end": 9}
    assert all(isinstance(v, int) for v in live.values())


@given(
    st.floats(0, 100), st.one_of(st.none(), st.floats(0, 100)), st.floats(0, 100)
)
def test_matches_agrees_with_bounds(start, end, ts):
    if end is not None and end < start:
        end = start
    f = EventFilter(start=start, end=end)
    expected = start <= ts and (end is None or ts <= end)
    assert f.matches(ev(ts=ts)) == expected


def test_re2_engine_means_the_same_and_cannot_hang():
    evil = "a" * 100_000 + "!"
    f = EventFilter(content="(a+)+$", tags=("temp.+",), engine="re2")
    assert not f.matches(ev(content=evil, tags=("temp-1",)))
    assert f.matches(ev(content="aaa", tags=("temp-1",)))
    assert not f.matches(ev(content="aaa", tags=("temp",)))  # still a full match on tags
    assert EventFilter.from_json('{"content": "C$"}', engine="re2").matches(ev())


def test_re2_refuses_what_it_cannot_run():
    with pytest.raises(InvalidFilterError, match="RE2"):
        EventFilter(content=r"(a)\1", engine="re2")
    with pytest.raises(InvalidFilterError, match="engine must be"):
        EventFilter(engine="pcre")


# --------------------------------------------------------------------------- the batch kernels

# Text where re and RE2 part ways: Unicode digits, word characters and spaces, case
# folds that reach ASCII (ſ, K), the spaces only re counts (\v, \x1c), line breaks.
_CHARS = st.sampled_from(list("aAbBcC019_ -.,:\n\t\v\x1c\x85") + ["é", "ſ", "K", "٣", "\u2003", "ß", "ǅ"])
_TEXT = st.text(_CHARS, max_size=8)
_TAG = st.text(_CHARS.filter(lambda c: c != ","), max_size=5)
_ATOMS = [
    "a", "b", "A", "1", "-", ".", ",", "é", "ſ", "K", "\\d", "\\D", "\\w", "\\W", "\\s", "\\S", "\\b", "\\B",
    "^", "$", "\\A", "\\Z", "\\.", "\\-", "\\x41", "\\n", "\\v", "[a-c]", "[^a]", "[\\s,]", "[\\d_]", "[]a]",
    "[[:alpha:]]", "(a|b)", "(?:a|\\d)", "(?P<g>a)", "(?i:a)", "(?=a)", "(?!b)", "(a)\\1", "\\u00e9", "#",
]
_REPEATS = ["", "", "*", "+", "?", "{1,2}", "{2}", "*?", "+?", "{,2}", "{1,}", "++", "{1000}", "{1001}"]
_PIECE = st.tuples(st.sampled_from(_ATOMS), st.sampled_from(_REPEATS)).map("".join)
_PATTERN = st.tuples(
    st.sampled_from(["", "", "(?i)", "(?s)", "(?m)", "(?x)", "(?a)"]),
    st.lists(_PIECE, min_size=0, max_size=4),
    st.booleans(),
    st.lists(_PIECE, min_size=1, max_size=2),
).map(lambda t: t[0] + "".join(t[1]) + ("|" + "".join(t[3]) if t[2] else ""))


def _batch(rows):
    from theia_frames.protocol.arrow import events_to_batch

    return events_to_batch(
        Event(id=i, timestamp=float(n), source=s, tags=list(tags), content=c) for n, (i, s, tags, c) in enumerate(rows)
    )


@given(
    rows=st.lists(st.tuples(_TEXT, _TEXT, st.lists(_TAG, max_size=3), _TEXT), max_size=12),
    engine=st.sampled_from(["re", "re2"]),
    where=st.sampled_from(["tags", "content", "id", "source"]),
    pattern=_PATTERN,
    second=st.one_of(st.none(), _PATTERN),
    start=st.one_of(st.none(), st.integers(0, 12)),
)
def test_kernel_mask_is_the_row_by_row_meaning(rows, engine, where, pattern, second, start):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # re's FutureWarning on some class syntax
        try:
            if where == "tags":
                f = EventFilter(start=start, tags=(pattern,) if second is None else (pattern, second), engine=engine)
            else:
                f = EventFilter(start=start, engine=engine, **{where: pattern})
        except InvalidFilterError:
            return
    batch = _batch(rows)
    d = batch.to_pydict()  # what the batch holds (an event's tags [""] travel as no tags)
    expected = [
        f.matches_fields(t, g, c, i, s)
        for t, g, c, i, s in zip(d["timestamp"], d["tags"], d["content"], d["id"], d["source"])
    ]
    assert f.mask_batch(batch).tolist() == expected
    assert f.match_batch(batch).column("id").to_pylist() == [i for i, m in zip(d["id"], expected) if m]
    if rows:
        # many rows of few values: each distinct value is matched once
        import pyarrow as pa

        many = pa.concat_batches([batch] * (5000 // len(rows) + 1))
        assert f.mask_batch(many).tolist() == expected * (5000 // len(rows) + 1)


def test_kernels_cover_the_common_patterns():
    # literal and rewritable patterns never go row by row (the per-row path is for the rest)
    f = EventFilter(tags=("sensor", r"temp-\d+"), content=r"(?i)\d+\.\dc\b", source="/dev/[a-z]+")
    tags, content, id_, source = f._batch_kernels()
    assert tags[0].literal == "sensor"
    assert tags[1].regex == r"\A(?:temp-\d+)\z" and tags[1].ascii_only
    assert content.regex == r"(?i)\d+\.\dc\b" and source.regex is not None and id_ is None
    assert EventFilter(content="a$")._batch_kernels()[1].regex is None
    assert EventFilter(content="a$", engine="re2")._batch_kernels()[1].regex == "a$"


def test_kernel_mask_reads_tags_as_lists_too():
    import pyarrow as pa

    b = _batch([("a", "s", ["x", "y"], "c"), ("b", "s", [], "c"), ("c", "s", [""], "c")])
    listed = b.set_column(3, "tags", pa.array([["x", "y"], [], []], pa.list_(pa.string())))
    for f in (EventFilter(tags=("y",)), EventFilter(tags=(".*",)), EventFilter(tags=("x", "z"))):
        assert f.mask_batch(listed).tolist() == f.mask_batch(b).tolist()


# --------------------------------------------------------------------------- times before 1970


def test_a_start_before_1970_is_a_bound_and_zero_is_none():
    assert Filter(-10).start == -10.0
    assert Filter(-10).matches(ev(ts=-10.0)) and not Filter(-10).matches(ev(ts=-10.5))
    assert Filter("1958-01-01").matches(ev(ts=Filter("1958-03-01").start))
    assert EventFilter(start=np.datetime64("1960-01-01")).start < 0
    assert EventFilter.from_json('{"start": -20.5, "end": -1}') == EventFilter(start=-20.5, end=-1)
    assert json.loads(Filter(-10).to_json()) == {"start": -10.0}
    # zero is no start, as on the wire (where it is left out): events before 1970 match
    assert Filter(0).start is None and Filter(0).matches(ev(ts=-10.0))
    # a peer that needs a start is sent the earliest accepted event time
    assert Filter().for_find(plain=True)["start"] == EARLIEST_EVENT_TIME
    assert Filter(-10).for_find(plain=True)["start"] == -10.0
    assert Filter(-10.5).for_live(plain=True)["start"] == -11


# --------------------------------------------------------------------------- frame times as bounds

_WIRE_TIMES = st.one_of(
    st.floats(min_value=-9e9, max_value=9e9, allow_nan=False),
    st.floats(min_value=1.6e9, max_value=1.8e9, allow_nan=False),  # today's times: the coarsest floats
    st.floats(min_value=-1e3, max_value=1e3, allow_nan=False),
)


@given(t=_WIRE_TIMES)
def test_a_time_read_from_a_frame_finds_its_event_as_start_and_as_end(t):
    from theia_frames.frames.convert import to_dataframe

    df = to_dataframe([Event(id="x", timestamp=t)], progress=False)
    shown = df["timestamp"][0]
    indexed = to_dataframe([Event(id="x", timestamp=t)], index="timestamp", progress=False).index[0]
    assert frame_micros(t) * 1000 == shown.value  # the frame's rounding is the rule's
    for bound in (shown, indexed, shown.to_datetime64(), shown.to_pydatetime(), shown.isoformat()):
        f = Filter(bound).match_end(bound)
        assert f.matches(ev(ts=t)), (t, bound)
        assert f.mask_batch(_times_batch([t])).all()
        # and nothing a frame would show at another microsecond
        assert frame_micros(f.start) == frame_micros(f.end) == frame_micros(t)
        assert frame_micros(np.nextafter(f.start, -np.inf)) < frame_micros(t) < frame_micros(np.nextafter(f.end, np.inf))


def _times_batch(times):
    from theia_frames.protocol.arrow import events_to_batch

    return events_to_batch([Event(id=str(i), timestamp=t) for i, t in enumerate(times)])
