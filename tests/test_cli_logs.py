"""The command line's log import (cli.logs): import-log, send --stdin with a format,
the --timestamp rule, and import of a file that is not a store."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

import theia_frames as tf
from test_logs import CASES, NAMES, log_path
from theia_frames.cli import main
from theia_frames.frames.logs import read_log


def cli_args(read: dict) -> list[str]:
    """read_log's options for one log as import-log's flags."""
    args = []
    for key, flag in (("format", "--format"), ("template", "--template"), ("time_format", "--time-format"), ("year", "--year")):
        if key in read:
            args += [flag, str(read[key])]
    return args


def run(capfd, *argv: str, stdin: bytes | None = None, monkeypatch=None) -> tuple[int, str, str]:
    if stdin is not None:
        assert monkeypatch is not None
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    code = main(list(argv))
    out, err = capfd.readouterr()
    return code, out, err


def iso(t: pd.Timestamp) -> str:
    return t.isoformat()


def test_import_log_of_each_real_log_then_find_in_its_own_time_range_returns_every_line(capfd):
    with tf.serve(db=":memory:", port=0) as server:
        for name in NAMES:
            read = CASES[name]["read"]
            code, out, err = run(capfd, "import-log", str(log_path(name)), "--url", server.url, *cli_args(read), "--no-progress")
            assert code == 0, err
            assert "2000 record(s)" in err and f"stored 2000 event(s) in {server.url}" in err
            df = read_log(log_path(name), **read)
            lo, hi = df["timestamp"].min(), df["timestamp"].max()
            code, out, err = run(capfd, "find", "--url", server.url, "--start", iso(lo), "--end", iso(hi), "--format", "jsonl")
            assert code == 0, err
            rows = [json.loads(line) for line in out.splitlines()]
            expected = df.sort_values("timestamp", kind="stable")
            assert [r["content"] for r in rows] == expected["content"].tolist(), name
            assert [r["source"] for r in rows] == expected["source"].astype(str).tolist()
            assert len({r["id"] for r in rows}) == 2000


def test_import_log_reports_lines_it_could_not_read_and_exits_1(capfd, tmp_path, collector):
    path = tmp_path / "app.log"
    path.write_text("2024-05-01 10:00:00,000 INFO a: one\nTraceback:\n  boom\n2024-05-01 10:00:01,000 INFO a: two\n")
    bad = tmp_path / "bad.log"
    bad.write_text("Dec 10 06:55:46 h a: ok\nnot syslog\n")
    code, out, err = run(capfd, "import-log", str(path), "--url", collector.url, "--format", "python", "--tag", "app")
    assert code == 0, err
    assert "2 record(s), 2 continuation line(s) joined" in err and "stored 2 event(s)" in err
    got = tf.to_dataframe(tf.find(collector.url, tf.Filter("2024-05-01")), progress=False)
    assert got["content"].tolist() == ["one\nTraceback:\n  boom", "two"]
    assert got["tags"].tolist() == [["INFO", "a", "app"], ["INFO", "a", "app"]]
    assert got["source"].astype(str).tolist() == [str(path)] * 2
    code, out, err = run(capfd, "import-log", str(bad), "--url", collector.url, "--format", "syslog", "--year", "2015",
                         "--source-from", "app", "--tag-from", "host")
    assert code == 1
    assert "line 2: does not match the format: 'not syslog'" in err and "stored 1 event(s)" in err
    got = tf.to_dataframe(tf.find(collector.url, tf.Filter("2015-12-10").match_end("2015-12-11")), progress=False)
    assert got["source"].astype(str).tolist() == ["a"] and got["tags"].tolist() == [["h"]]


def test_import_log_refuses_what_it_cannot_do(capfd, tmp_path):
    code, out, err = run(capfd, "import-log", str(tmp_path / "missing.log"), "--format", "syslog")
    assert code == 1 and "is not a file" in err
    with pytest.raises(SystemExit):
        main(["import-log", str(tmp_path), "--format", "nope"])
    with pytest.raises(SystemExit):  # a format is required
        main(["import-log", str(tmp_path)])


def test_send_stdin_reads_each_lines_own_time_with_a_format(capfd, monkeypatch, collector):
    lines = b"Dec 31 23:59:59 gw sshd[1]: a\nJan  1 00:00:01 gw cron[2]: b\n"
    code, out, err = run(capfd, "send", "--url", collector.url, "--stdin", "--format", "syslog", "--year", "2023",
                         "--tag", "imported", stdin=lines, monkeypatch=monkeypatch)
    assert code == 0, err
    assert "stored 2 event(s)" in err
    got = tf.to_dataframe(tf.find(collector.url, tf.Filter("2023-12-31")), progress=False)
    assert got["timestamp"].tolist() == [pd.Timestamp("2023-12-31 23:59:59", tz="UTC"), pd.Timestamp("2024-01-01 00:00:01", tz="UTC")]
    assert got["tags"].tolist() == [["sshd", "imported"], ["cron", "imported"]]
    assert got["source"].astype(str).tolist() == ["gw", "gw"]  # the syslog host
    code, out, err = run(capfd, "send", "--url", collector.url, "--stdin", "--format", "syslog", "--year", "2022",
                         "--source", "/var/log/syslog", stdin=lines, monkeypatch=monkeypatch)
    got = tf.to_dataframe(tf.find(collector.url, tf.Filter("2022-12-31").match_end("2023-01-02")), progress=False)
    assert code == 0 and got["source"].astype(str).tolist() == ["/var/log/syslog"] * 2  # --source is what it says


def test_send_stdin_with_a_timestamp_is_refused_never_ignored(capfd, monkeypatch, collector):
    code, out, err = run(capfd, "send", "--url", collector.url, "--stdin", "--timestamp", "2024-01-01T00:00:00Z",
                         stdin=b"a\nb\n", monkeypatch=monkeypatch)
    assert code == 1 and "--timestamp is for one event" in err
    assert len(list(tf.find(collector.url, tf.Filter(0)))) == 0
    code, out, err = run(capfd, "send", "--url", collector.url, "--format", "syslog", "hello")
    assert code == 1 and "read the lines of --stdin" in err


def test_import_of_a_plain_log_file_points_to_import_log(capfd, tmp_path):
    code, out, err = run(capfd, "import", str(log_path("OpenSSH")), "--db", str(tmp_path / "x.db"))
    assert code == 1
    assert "is not a theia store: its first line is not an event" in err and "theia-frames import-log" in err
    assert "damaged" not in err and not (tmp_path / "x.db").exists()
