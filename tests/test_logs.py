"""read_log and iter_log (frames.logs, frames.logformats), parse_times (timeparse),
send_many(time_format=), sensor_events(start=text): real logs against their ground truth,
each preset on small samples, and the same events through our collector and the upstream one."""

from __future__ import annotations

import datetime as dt
import io
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import theia_frames as tf
from theia_frames.exceptions import DecodeError, InvalidEventError, UsageError
from theia_frames.frames.logformats import LOG_FORMATS, template_regex
from theia_frames.frames.logs import LogReport, UnparsedLogWarning, iter_log, read_log
from theia_frames.timeparse import parse_times
from waiting import poll_until

LOGHUB = Path(__file__).parent / "data" / "loghub"

# How each of the eight logs is read (a preset where one fits, else one template), and,
# for the test alone, how its ground truth's columns map: the CSV's time text and its
# format, and the CSV columns that are fields of the frame (CSV column -> frame column).
CASES: dict[str, dict[str, Any]] = {
    "Apache": dict(
        read=dict(format="apache-error"),
        truth_time=(["Time"], "%a %b %d %H:%M:%S %Y"),
        fields={"Level": "level"},
    ),
    "HDFS": dict(
        read=dict(template="<Date> <Time> <Pid> <Level> <Component>: <Content>", time_format="%y%m%d %H%M%S"),
        truth_time=(["Date", "Time"], "%y%m%d %H%M%S"),
        fields={"Pid": "Pid", "Level": "Level", "Component": "Component"},
    ),
    "Hadoop": dict(
        read=dict(template=r"<Date> <Time> <Level> \[<Process>\] <Component>: <Content>", time_format="%Y-%m-%d %H:%M:%S,%f"),
        truth_time=(["Date", "Time"], "%Y-%m-%d %H:%M:%S,%f"),
        fields={"Level": "Level", "Process": "Process", "Component": "Component"},
    ),
    "HealthApp": dict(
        read=dict(template=r"<Time>\|<Component>\|<Pid>\|<Content>", time_format="%Y%m%d-%H:%M:%S:%f"),
        truth_time=(["Time"], "%Y%m%d-%H:%M:%S:%f"),
        fields={"Component": "Component", "Pid": "Pid"},
    ),
    "OpenSSH": dict(
        read=dict(format="syslog", year=2015),
        truth_time=(["Date", "Day", "Time"], "%b %d %H:%M:%S"),
        fields={"Component": "host", "Pid": "pid"},
    ),
    "Proxifier": dict(
        read=dict(template=r"\[<Time>\] <Program> - <Content>", time_format="%m.%d %H:%M:%S", year=2016),
        truth_time=(["Time"], "%m.%d %H:%M:%S"),
        fields={"Program": "Program"},
    ),
    "Spark": dict(
        read=dict(template="<Date> <Time> <Level> <Component>: <Content>", time_format="%y/%m/%d %H:%M:%S"),
        truth_time=(["Date", "Time"], "%y/%m/%d %H:%M:%S"),
        fields={"Level": "Level", "Component": "Component"},
    ),
    "Zookeeper": dict(
        read=dict(
            template=r"<Date> <Time> - <Level>  \[<Node>:<Component>@<Id>\] - <Content>", time_format="%Y-%m-%d %H:%M:%S,%f"
        ),
        truth_time=(["Date", "Time"], "%Y-%m-%d %H:%M:%S,%f"),
        fields={"Level": "Level", "Node": "Node", "Component": "Component", "Id": "Id"},
    ),
}
NAMES = sorted(CASES)


def log_path(name: str) -> Path:
    return LOGHUB / name / f"{name}_2k.log"


def truth(name: str) -> pd.DataFrame:
    return pd.read_csv(LOGHUB / name / f"{name}_2k.log_structured.csv", dtype=str, keep_default_na=False)


def truth_times(name: str, csv: pd.DataFrame) -> pd.Series:
    """The ground truth's times by pandas alone (not the code under test); a time without a
    year is compared as month, day and time of day."""
    columns, fmt = CASES[name]["truth_time"]
    text = csv[columns[0]]
    for c in columns[1:]:
        text = text + " " + csv[c]
    if "%Y" not in fmt and "%y" not in fmt:
        return pd.to_datetime("2000 " + text, format="%Y " + fmt).dt.strftime("%m-%d %H:%M:%S.%f")
    return pd.to_datetime(text, format=fmt).dt.tz_localize("UTC")


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    return {name: read_log(log_path(name), **CASES[name]["read"]) for name in NAMES}


# --------------------------------------------------------------------------- eight real logs


@pytest.mark.parametrize("name", NAMES)
def test_a_real_log_reads_as_its_ground_truth(frames, name):
    df, csv = frames[name], truth(name)
    report = df.attrs["theia_report"]
    assert report.ok and report.lines == 2000 and report.records == 2000 and report.joined == 0
    assert len(df) == len(csv) == 2000
    # the rows are the file's lines, in its order: the content of each is the ground truth's
    assert df["content"].tolist() == csv["Content"].tolist()
    expected = truth_times(name, csv)
    if not isinstance(expected.dtype, pd.DatetimeTZDtype):  # no year in the log: month, day and time of day
        assert df["timestamp"].dt.strftime("%m-%d %H:%M:%S.%f").tolist() == expected.tolist()
    else:
        assert (df["timestamp"] == expected).all()
    for column, field in CASES[name]["fields"].items():
        assert df[field].fillna("").tolist() == csv[column].tolist(), column
        assert df[field].value_counts().to_dict() == csv[column].value_counts().to_dict(), column
    assert df.dtypes[list(tf.EVENT_DTYPES)].to_dict() == tf.EVENT_DTYPES
    assert df["id"].is_unique


def test_a_log_without_a_year_keeps_its_order_across_the_year(frames):
    # Proxifier's sample goes from October to July: the year turned in between
    df = frames["Proxifier"]
    assert df["timestamp"].is_monotonic_increasing
    assert df["timestamp"].iloc[0].year == 2016 and df["timestamp"].iloc[-1].year == 2017


def test_reading_leaves_no_thread_behind():
    import threading

    before = set(threading.enumerate())
    read_log(log_path("OpenSSH"), **CASES["OpenSSH"]["read"])
    chunks = iter_log(log_path("HDFS"), **CASES["HDFS"]["read"], batch_size=100)
    next(chunks)
    chunks.close()  # left after its first frame
    assert set(threading.enumerate()) <= before


def test_chunks_of_a_real_log_are_the_whole_frame(frames):
    name = "Zookeeper"
    chunks = list(iter_log(log_path(name), **CASES[name]["read"], batch_size=333))
    # a record goes with the chunk after it when it may go on there
    assert all(len(c) <= 333 for c in chunks) and len(chunks) >= 6 and sum(len(c) for c in chunks) == 2000
    whole = pd.concat(chunks, ignore_index=True)
    pd.testing.assert_series_equal(whole["timestamp"], frames[name]["timestamp"])
    assert whole["content"].tolist() == frames[name]["content"].tolist()


def _same_events(got: pd.DataFrame, sent: pd.DataFrame) -> None:
    # every event, by time and then in the file's order (Apache, HealthApp and Zookeeper
    # have lines out of time order; in the other five the file's order is the time order)
    sent = sent.sort_values("timestamp", kind="stable").reset_index(drop=True)
    assert got["id"].tolist() == sent["id"].tolist()
    assert (got["timestamp"].to_numpy() == sent["timestamp"].to_numpy()).all()
    assert got["content"].tolist() == sent["content"].tolist()
    assert got["source"].astype(str).tolist() == sent["source"].astype(str).tolist()
    assert got["tags"].tolist() == sent["tags"].tolist()


def test_real_logs_go_through_our_collector_unchanged_and_in_file_order(frames):
    with tf.serve(db=":memory:", port=0) as server, tf.Client(server.url) as client:
        for name in NAMES:
            df = frames[name]
            lo, hi = df["timestamp"].min(), df["timestamp"].max()
            client.send_many(df, wait=True)
            got = tf.to_dataframe(client.find(tf.Filter(lo).match_end(hi).match_content("")), progress=False)
            mine = got[got["id"].isin(set(df["id"]))].reset_index(drop=True)
            _same_events(mine, df)


def test_real_logs_go_through_the_upstream_collector_unchanged_and_in_file_order(frames, upstream_file_of_module):
    url = upstream_file_of_module.url
    # logs whose lines are in time order (upstream's file store returns others in arrival order,
    # not by time); OpenSSH: 1,771 of 2,000 lines share their second with another
    for name in ("OpenSSH", "HDFS", "Spark"):
        df = frames[name]
        with tf.Client(url, idle_timeout=1.0) as client:
            client.send_many(df)
        # no end: upstream's file store misses, with an end, events it filed after a later one
        # (docs/protocol.md); HDFS's lines span three days and arrive within a second
        flt = tf.Filter(df["timestamp"].min())
        ids = set(df["id"])

        def mine() -> pd.DataFrame:
            got = tf.to_dataframe(tf.find(url, flt, idle_timeout=1.0), progress=False)
            return got[got["id"].isin(ids)].reset_index(drop=True)

        assert poll_until(lambda: len(mine()) >= len(df), timeout=60, interval=0.2)
        _same_events(mine(), df)


# --------------------------------------------------------------------------- the presets on small samples


def quiet_read(lines, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnparsedLogWarning)
        return read_log(lines, *args, **kw)


def test_syslog_rfc3164_with_priority_year_rollover_and_a_bad_line():
    lines = [
        "<38>Dec 31 23:59:59 gw sshd[41]: Accepted password for ann",
        "Jan  1 00:00:01 gw kernel: eth0 up",
        "Jan  1 00:00:02 gw -- MARK --",
        "this is not syslog",
        "",
    ]
    with pytest.warns(UnparsedLogWarning, match="line 4: does not match the format"):
        df = read_log(lines, format="syslog", year=2023)
    assert df["timestamp"].tolist() == [
        pd.Timestamp("2023-12-31 23:59:59", tz="UTC"),
        pd.Timestamp("2024-01-01 00:00:01", tz="UTC"),
        pd.Timestamp("2024-01-01 00:00:02", tz="UTC"),
    ]
    assert df["content"].tolist() == ["Accepted password for ann", "eth0 up", "-- MARK --"]
    assert df["source"].tolist() == ["gw"] * 3
    assert df["tags"].tolist() == [["sshd", "info"], ["kernel"], []]
    assert df["level"].tolist()[0] == "info" and df["facility"].tolist()[0] == "4"
    assert df["pid"].tolist()[:2] == ["41", None] or pd.isna(df["pid"].iloc[1])
    report = df.attrs["theia_report"]
    assert (report.lines, report.records, report.unparsed, report.blank) == (5, 3, 1, 1)
    assert report.unparsed_lines[0].line == 4 and not report.ok


def test_syslog_takes_its_year_from_the_files_date(tmp_path):
    path = tmp_path / "messages"
    path.write_text("Nov 30 10:00:00 db cron[1]: a\nDec  1 10:00:00 db cron[1]: b\n")
    stamp = dt.datetime(2022, 3, 5, tzinfo=dt.timezone.utc).timestamp()
    os.utime(path, (stamp, stamp))
    df = read_log(path, format="syslog")
    # November is after the file's March: the lines were written the year before
    assert [t.year for t in df["timestamp"]] == [2021, 2021]
    assert df.attrs["theia_report"].path == str(path)


def test_rfc5424_reads_nil_values_structured_data_and_the_severity():
    lines = [
        '<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut="3"] An application event',
        "<13>1 2024-05-01T10:00:00+02:00 - app 41 - - \ufeffhello",
    ]
    df = read_log(lines, format="rfc5424")
    assert df["timestamp"].tolist() == [
        pd.Timestamp("2003-10-11 22:14:15.003", tz="UTC"),
        pd.Timestamp("2024-05-01 08:00:00", tz="UTC"),
    ]
    assert df["content"].tolist() == ["An application event", "hello"]
    assert df["source"].tolist() == ["mymachine.example.com", ""]
    assert df["level"].tolist() == ["notice", "notice"]
    assert df["structured"].iloc[0] == '[exampleSDID@32473 iut="3"]' and pd.isna(df["msgid"].iloc[1])


def test_access_log_common_and_combined():
    lines = [
        '127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326',
        '10.0.0.2 - - [10/Oct/2000:13:55:37 -0700] "POST /login HTTP/1.1" 302 - "http://x/" "curl/8.0"',
    ]
    df = read_log(lines, format="nginx")
    assert df["timestamp"].tolist() == [
        pd.Timestamp("2000-10-10 20:55:36", tz="UTC"),
        pd.Timestamp("2000-10-10 20:55:37", tz="UTC"),
    ]
    assert df["content"].tolist() == lines  # the whole line
    assert df["tags"].tolist() == [["GET", "200"], ["POST", "302"]]
    assert df["path"].tolist() == ["/apache_pb.gif", "/login"] and df["agent"].iloc[1] == "curl/8.0"
    assert df["source"].tolist() == ["", ""]


def test_apache_error_log_22_and_24():
    lines = [
        "[Sun Dec 04 04:47:44 2005] [error] mod_jk child workerEnv in error state 6",
        "[Wed Oct 11 14:32:52.123456 2000] [core:error] [pid 35708:tid 4328636416] [client 72.15.99.187] File does not exist",
    ]
    df = read_log(lines, format="apache-error")
    assert df["timestamp"].tolist() == [
        pd.Timestamp("2005-12-04 04:47:44", tz="UTC"),
        pd.Timestamp("2000-10-11 14:32:52.123456", tz="UTC"),
    ]
    assert df["level"].tolist() == ["error", "error"] and df["module"].tolist()[1] == "core"
    assert df["content"].tolist() == ["mod_jk child workerEnv in error state 6", "[client 72.15.99.187] File does not exist"]
    assert df["tags"].tolist() == [["error"], ["error", "core"]]


def test_python_logging_with_a_stack_trace_and_tz():
    lines = [
        "2024-05-01 10:00:00,123 INFO app.db: connecting",
        "2024-05-01 10:00:01,500 ERROR app.db: lost the connection",
        "Traceback (most recent call last):",
        '  File "db.py", line 1, in connect',
        "ConnectionError: gone",
        "2024-05-01 10:00:02,000 WARNING app: retrying",
    ]
    df = read_log(lines, format="python", tz="Europe/Berlin")
    assert df["timestamp"].tolist() == [
        pd.Timestamp("2024-05-01 08:00:00.123", tz="UTC"),
        pd.Timestamp("2024-05-01 08:00:01.500", tz="UTC"),
        pd.Timestamp("2024-05-01 08:00:02", tz="UTC"),
    ]
    assert df["content"].iloc[1] == "lost the connection\n" + "\n".join(lines[2:5])
    assert df["tags"].tolist() == [["INFO", "app.db"], ["ERROR", "app.db"], ["WARNING", "app"]]
    report = df.attrs["theia_report"]
    assert (report.records, report.joined, report.unparsed) == (3, 3, 0)


def test_continuation_lines_before_any_record_are_reported_and_records_span_chunks():
    lines = ["  orphan", "2024-05-01T10:00:00Z ERROR boom"] + [f"  at frame {i}" for i in range(7)] + [
        "2024-05-01T10:00:01Z done"
    ]
    chunks = list(iter_log(lines, "iso", batch_size=3))
    df = pd.concat(chunks, ignore_index=True)
    assert df["content"].tolist() == ["boom\n" + "\n".join(lines[2:9]), "done"]
    assert df["level"].tolist()[0] == "ERROR"
    report = chunks[-1].attrs["theia_report"]
    assert report.unparsed == 1 and "no record before it" in report.unparsed_lines[0].reason
    assert (report.lines, report.records, report.joined) == (10, 2, 7)


def test_iso_lines_in_several_forms():
    lines = ["2024-05-01T10:00:00.5+02:00 [warn] a", "2024-05-01 10:00 b", "2024-05-01T10:00:00,25Z info: c"]
    df = read_log(lines, format="iso")
    assert df["timestamp"].tolist() == [
        pd.Timestamp("2024-05-01 08:00:00.5", tz="UTC"),
        pd.Timestamp("2024-05-01 10:00", tz="UTC"),
        pd.Timestamp("2024-05-01 10:00:00.25", tz="UTC"),
    ]
    assert df["content"].tolist() == ["a", "b", "c"] and df["level"].tolist()[0] == "warn"


def test_json_lines_with_text_and_epoch_times_nested_values_and_bad_lines():
    lines = [
        '{"time": "2024-05-01T10:00:00Z", "level": "info", "msg": "up", "host": "a"}',
        '{"ts": 1714557601.5, "level": "warn", "message": "slow", "ctx": {"ms": 900}}',
        "not json",
        "[1, 2]",
        '{"msg": "no time"}',
    ]
    df = quiet_read(lines, "jsonl")
    assert df["timestamp"].tolist() == [pd.Timestamp("2024-05-01 10:00:00", tz="UTC"), pd.Timestamp("2024-05-01 10:00:01.5", tz="UTC")]
    assert df["content"].tolist() == ["up", "slow"] and df["source"].tolist() == ["a", ""]
    assert df["tags"].tolist() == [["info"], ["warn"]] and df["ctx"].iloc[1] == '{"ms": 900}'
    report = df.attrs["theia_report"]
    assert [u.line for u in report.unparsed_lines] == [3, 4, 5]
    assert "not JSON" in report.unparsed_lines[0].reason and "no time" in report.unparsed_lines[2].reason


def test_json_lines_with_epoch_ms():
    df = read_log(['{"t": 1714521600123, "msg": "x"}'], "jsonl", time_format="epoch_ms")
    assert df["timestamp"].tolist() == [pd.Timestamp("2024-05-01 00:00:00.123", tz="UTC")]


def test_logfmt_quoted_values_and_lines_without_pairs():
    lines = ['time=2024-05-01T10:00:00Z level=info msg="hello \\"world\\"" port=80 host=a', "garbage", "ts=1714521600 msg=x"]
    df = quiet_read(lines, "logfmt")
    assert df["content"].tolist() == ['hello "world"', "x"] and df["port"].tolist()[0] == "80"
    assert df["timestamp"].tolist() == [pd.Timestamp("2024-05-01 10:00", tz="UTC"), pd.Timestamp("2024-05-01 00:00", tz="UTC")]
    assert df.attrs["theia_report"].unparsed == 1


def test_a_regex_of_your_own_with_epoch_seconds_source_and_tags():
    lines = ["1714521600 web-1 ERROR disk full", "1714521601.25 web-2 INFO ok"]
    df = read_log(lines, regex=r"(?P<timestamp>\S+) (?P<host>\S+) (?P<level>\w+) (?P<content>.*)",
                  time_format="epoch", source="host", tags=["level"], add_tags=["prod"])
    assert df["timestamp"].tolist() == [pd.Timestamp(1714521600, unit="s", tz="UTC"), pd.Timestamp(1714521601.25, unit="s", tz="UTC")]
    assert df["source"].tolist() == ["web-1", "web-2"] and df["tags"].tolist() == [["ERROR", "prod"], ["INFO", "prod"]]


def test_a_regex_re2_cannot_run_is_read_with_pythons_re():
    df = read_log(["a-1 2024-05-01T00:00:00Z x"], regex=r"(?P<k>\w)(?=-)-\d (?P<timestamp>\S+) (?P<content>.*)")
    assert df["k"].tolist() == ["a"] and df["content"].tolist() == ["x"]


def test_templates_follow_logparser():
    assert template_regex(r"\[<Time>\] <Program> - <Content>").startswith(r"\[(?P<Time>.*?)\]")
    with pytest.raises(UsageError, match="used twice"):
        template_regex("<A> <A>")
    with pytest.raises(UsageError, match="angle brackets"):
        template_regex("no fields")


def test_a_time_that_does_not_read_is_reported_with_its_continuation_lines():
    lines = ["2024-13-01 10:00:00,000 ERROR x: bad month", "  more", "2024-05-01 10:00:00,000 INFO x: fine"]
    with pytest.warns(UnparsedLogWarning):
        df = read_log(lines, format="python")
    report = df.attrs["theia_report"]
    assert df["content"].tolist() == ["fine"] and report.unparsed == 2 and report.joined == 0
    assert "does not read" in report.unparsed_lines[0].reason and report.unparsed_lines[0].line == 1
    assert report.unparsed_lines[0].count == 2 and "(and its 1 continuation line(s))" in report.summary()


def test_strict_raises_on_the_first_line_not_read():
    with pytest.raises(DecodeError, match="line 2"):
        read_log(["Jan  1 00:00:00 h a: x", "junk"], format="syslog", year=2024, strict=True)


def test_the_report_keeps_the_first_lines_and_counts_all():
    report = LogReport()
    df = quiet_read(["x"] * 1500, format="syslog", year=2024, report=report)
    assert len(df) == 0 and report.unparsed == 1500 and len(report.unparsed_lines) == 1000
    assert "... and 1480 more line(s) not read" in report.summary()
    assert df.dtypes.to_dict() == tf.EVENT_DTYPES


def test_files_binary_streams_and_crlf(tmp_path):
    path = tmp_path / "app.log"
    path.write_bytes(b"2024-05-01T10:00:00Z one  \r\n2024-05-01T10:00:01Z two \xff\r\n")
    df = read_log(path, format="iso")
    assert df["content"].tolist() == ["one", "two \ufffd"] and df["source"].tolist() == [str(path)] * 2
    assert read_log(io.BytesIO(path.read_bytes()), format="iso")["content"].tolist() == ["one", "two \ufffd"]


def test_usage_errors_name_the_problem(tmp_path):
    with pytest.raises(UsageError, match="exactly one of"):
        read_log(["x"])
    with pytest.raises(UsageError, match="unknown log format 'apache'"):
        read_log(["x"], format="apache")
    with pytest.raises(UsageError, match="no field 'nope'"):
        read_log(["x"], format="syslog", source="nope")
    with pytest.raises(UsageError, match="names no time"):
        read_log(["x"], regex=r"(?P<content>.*)")
    with pytest.raises(UsageError, match="splitlines"):
        read_log("2024-05-01T10:00:00Z a\n2024-05-01T10:00:01Z b", format="iso")
    with pytest.raises(UsageError, match="cannot read log"):
        read_log(tmp_path / "missing.log", format="iso")
    with pytest.raises(UsageError, match="no year"):
        parse_times(["Dec 10 06:55:46"], "%b %d %H:%M:%S")


def test_every_preset_has_a_description_and_reads_a_line():
    samples = {
        "syslog": "Dec 10 06:55:46 LabSZ sshd[24200]: hi",
        "rfc5424": "<34>1 2024-05-01T10:00:00Z h a - - - hi",
        "access": '1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.0" 200 1',
        "apache-error": "[Sun Dec 04 04:47:44 2005] [notice] hi",
        "iso": "2024-05-01T10:00:00Z hi",
        "python": "2024-05-01 10:00:00,000 INFO a: hi",
        "jsonl": '{"time": "2024-05-01T10:00:00Z", "msg": "hi"}',
        "logfmt": "time=2024-05-01T10:00:00Z msg=hi",
    }
    assert set(samples) == {f.name for f in LOG_FORMATS.values()}
    for name, line in samples.items():
        assert LOG_FORMATS[name].description
        df = read_log([line], format=name, year=2024)
        assert len(df) == 1 and df.attrs["theia_report"].ok, name


# --------------------------------------------------------------------------- parse_times


def test_parse_times_agrees_with_pandas_on_random_times():
    rng = np.random.default_rng(7)
    stamps = pd.to_datetime(rng.integers(0, 4_000_000_000, 500), unit="s") + pd.to_timedelta(rng.integers(0, 10**6, 500), unit="us")
    for fmt in ("%Y-%m-%d %H:%M:%S.%f", "%d/%b/%Y:%H:%M:%S", "%a %b %d %H:%M:%S %Y", "%y%m%d %H%M%S", "%Y%m%d-%I:%M:%S %p", "%j %Y %H:%M"):
        text = stamps.strftime(fmt)
        expected = pd.to_datetime(pd.Series(text), format=fmt).dt.tz_localize("UTC")
        assert (parse_times(pd.Series(text), fmt) == expected).all(), fmt


def test_parse_times_reads_each_distinct_time_once_and_keeps_the_rows_order():
    text = ["Dec 31 23:59:59"] * 3 + ["Jan  1 00:00:00"] * 3 + [None, "Feb 30 00:00:00"] * 2
    got = parse_times(text, "%b %d %H:%M:%S", year=2023)
    assert got[:6].tolist() == [pd.Timestamp("2023-12-31 23:59:59", tz="UTC")] * 3 + [pd.Timestamp("2024-01-01", tz="UTC")] * 3
    assert got[6:].isna().all()


def test_parse_times_marks_what_does_not_read_and_uses_the_zone():
    got = parse_times(["2024-02-30 10:00:00", "2024-03-31 02:30:00", "2024-03-31 03:30:00", "x"], "%Y-%m-%d %H:%M:%S",
                      tz="Europe/Berlin")
    assert got.isna().tolist() == [True, True, False, True]  # no 30 February; 02:30 never happened in Berlin
    assert got[2] == pd.Timestamp("2024-03-31 01:30", tz="UTC")
    with pytest.raises(UsageError, match="invalid tz"):
        parse_times(["2024-01-01"], tz="Mars/Olympus")
    # the hour Berlin's clocks go back, twice, in a log's order
    back = parse_times(["2024-10-27 02:30:00", "2024-10-27 02:45:00", "2024-10-27 02:15:00", "2024-10-27 03:00:00"],
                       "%Y-%m-%d %H:%M:%S", tz="Europe/Berlin")
    assert back.diff().dropna().dt.total_seconds().tolist() == [900.0, 1800.0, 2700.0]
    assert parse_times(["0001-01-01 00:00:00", "9999-01-01 00:00:00"], "%Y-%m-%d %H:%M:%S").isna().all()


# --------------------------------------------------------------------------- send_many(time_format=), sensor_events


def test_send_many_reads_text_times_with_time_format_and_tz(sender):
    logs = pd.DataFrame({"time": ["10/Oct/2000:13:55:36", "10/Oct/2000:13:55:37"], "message": ["a", "b"]})
    sender.send_many(logs, columns={"timestamp": "time", "content": "message"}, time_format="%d/%b/%Y:%H:%M:%S",
                     tz="America/Denver", wait=True)
    got = tf.to_dataframe(sender.find(tf.Filter("2000-10-10")), progress=False)
    assert got["timestamp"].tolist() == [pd.Timestamp("2000-10-10 19:55:36", tz="UTC"), pd.Timestamp("2000-10-10 19:55:37", tz="UTC")]
    ms = pd.DataFrame({"timestamp": [1714521600123], "content": ["x"]})
    assert tf.to_event_table(ms, time_format="epoch_ms").column("timestamp").to_pylist() == [1714521600.123]


async def _async_send(url: str, df: pd.DataFrame) -> None:
    async with tf.AsyncClient(url) as client:
        await client.send_many(df, time_format="%b %d %Y %H:%M:%S", wait=True)


def test_async_send_many_takes_time_format_too(collector):
    import asyncio

    asyncio.run(_async_send(collector.url, pd.DataFrame({"timestamp": ["Dec 10 2015 06:55:46"], "content": ["x"]})))
    got = tf.to_dataframe(tf.find(collector.url, tf.Filter("2015-12-10")), progress=False)
    assert got["timestamp"].tolist() == [pd.Timestamp("2015-12-10 06:55:46", tz="UTC")]


def test_send_many_says_which_row_does_not_read():
    df = pd.DataFrame({"timestamp": ["Dec 10 2015 06:55:46", "Dec 99 2015 06:55:46"], "content": ["a", "b"]})
    with pytest.raises(InvalidEventError, match=r"row 1 holds 'Dec 99 2015 06:55:46'"):
        tf.to_event_table(df, time_format="%b %d %Y %H:%M:%S")
    with pytest.raises(UsageError, match="give time_format="):
        tf.to_event_table(df)
    with pytest.raises(UsageError, match="has no year"):
        tf.to_event_table(df, time_format="%b %d %H:%M:%S")


def test_sensor_events_take_a_start_as_time_text():
    events = tf.sensor_events(3, start="2024-05-01T09:50Z", rate=1)
    assert [e.timestamp for e in events] == [1714557000.0, 1714557001.0, 1714557002.0]
    with pytest.raises(UsageError, match="invalid start"):
        list(tf.sensor_events(1, start="soon"))


def test_new_ids_are_uuid4_text():
    import uuid

    from theia_frames.frames.events_table import new_event_ids

    ids = new_event_ids(1000).to_pylist()
    assert len(set(ids)) == 1000 and all(str(uuid.UUID(i)) == i and uuid.UUID(i).version == 4 for i in ids)
    assert new_event_ids(0).to_pylist() == [] and new_event_ids(1).type == pa.string()


def test_the_log_benchmark_runs_at_a_small_size():
    import subprocess
    import sys

    bench = Path(__file__).resolve().parent.parent / "bench" / "logs.py"
    done = subprocess.run([sys.executable, str(bench), "--size", "300KB", "--baseline-lines", "2000"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "(r) / (b) = " in done.stdout and "(i) / (b) = " in done.stdout
