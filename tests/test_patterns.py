"""Message patterns (theia_frames.frames.patterns): grouping accuracy on real logs, the comparison of an
incident window with its baseline, stable ids, miners, Dask and the accessor."""

from __future__ import annotations

import importlib.util
import pickle
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import theia_frames as tf
from theia_frames.exceptions import MissingDependencyError, UsageError
from theia_frames.frames.masking import mask_values
from theia_frames.frames.patterns import PatternMiner, pattern_id

pytest.importorskip("drain3")

# The grouping accuracy of the one default configuration, as BENCHMARKS.md reports it
# (python bench/patterns.py --accuracy); Drain's published figure beside it.
ACCURACY = {
    "HDFS": (1.0, 0.9975),
    "Hadoop": (0.996, 0.9475),
    "Spark": (0.9245, 0.92),
    "Zookeeper": (0.989, 0.9665),
    "HealthApp": (0.9025, 0.78),
    "Apache": (1.0, 1.0),
    "Proxifier": (1.0, 0.5265),
    "OpenSSH": (0.9945, 0.7875),
}


def _bench() -> ModuleType:
    """bench/patterns.py: the metric and the reading of the samples are written once, there."""
    if "bench_patterns" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench_patterns", Path(__file__).resolve().parent.parent / "bench" / "patterns.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_patterns"] = module
        spec.loader.exec_module(module)
    return sys.modules["bench_patterns"]


structured = _bench().structured
grouping_accuracy = _bench().grouping_accuracy


@pytest.fixture(scope="module")
def ssh() -> pd.DataFrame:
    """The OpenSSH sample with its own times (the log names no year: 2015) and its true templates."""
    raw = structured("OpenSSH")
    times = pd.to_datetime("2015 " + raw["Date"] + " " + raw["Day"] + " " + raw["Time"], format="%Y %b %d %H:%M:%S", utc=True)
    return pd.DataFrame(
        {
            "timestamp": times,
            "source": pd.Categorical(raw["Component"]),
            "content": raw["Content"].astype("string[pyarrow]"),
            "truth": raw["EventTemplate"],
        }
    )


# --------------------------------------------------------------------------- accuracy


def test_the_grouping_accuracy_metric_itself():
    truth = pd.Series(["a", "a", "b", "c"])
    assert grouping_accuracy(truth, pd.Series([1, 1, 2, 3])) == 1.0
    assert grouping_accuracy(truth, pd.Series([1, 1, 2, 2])) == 0.5  # b and c merged: both wrong
    assert grouping_accuracy(truth, pd.Series([1, 2, 3, 4])) == 0.5  # a split: both of its lines wrong


@pytest.mark.parametrize("name", list(ACCURACY))
def test_grouping_accuracy_does_not_fall(name):
    df = structured(name)
    out = tf.patterns(df, "Content")
    accuracy = grouping_accuracy(df["EventId"], out["pattern_id"])
    reported, drain = ACCURACY[name]
    assert drain == _bench().DRAIN[name]
    assert accuracy >= reported - 1e-9, f"{name}: {accuracy:.4f} < {reported}"
    assert accuracy >= drain


def test_average_accuracy_is_at_least_ninety_percent():
    assert np.mean([reported for reported, _ in ACCURACY.values()]) >= 0.90


# --------------------------------------------------------------------------- the incident


def test_compare_patterns_puts_the_new_and_the_three_spiking_templates_first(ssh):
    window = ("2015-12-10 10:50", "2015-12-10 11:05")
    out = tf.compare_patterns(ssh, window)

    # what the ground truth says: the templates of the window by their rate against before
    t0, t1 = pd.Timestamp("2015-12-10 10:50", tz="UTC"), pd.Timestamp("2015-12-10 11:05", tz="UTC")
    before, during = ssh[ssh["timestamp"] < t0], ssh[(ssh["timestamp"] >= t0) & (ssh["timestamp"] < t1)]
    assert (len(before), len(during)) == (1018, 982)
    minutes_before = (t0 - before["timestamp"].min()).total_seconds() / 60
    rate_before = before["truth"].value_counts() / minutes_before
    rate_during = during["truth"].value_counts() / 15
    ratio = (rate_during / rate_before).dropna().sort_values(ascending=False)
    new = sorted(set(during["truth"]) - set(before["truth"]))
    assert new == ["fatal: Write failed: Connection reset by peer [preauth]"]
    spiking = list(ratio.index[:3])
    assert all(35 <= r <= 44 for r in ratio.iloc[:3]) and ratio.iloc[3] < 10

    assert out.loc[0, "status"] == "new" and out.loc[0, "pattern"] == new[0]
    assert list(out.loc[1:3, "status"]) == ["spiking"] * 3
    patterned = tf.patterns(ssh)
    for row in out.loc[1:3].itertuples():
        truths = set(patterned.loc[patterned["pattern_id"] == row.pattern_id, "truth"])
        assert truths == {spiking[row.Index - 1]} or truths <= set(spiking) and len(truths) == 1
    assert {t for row in out.loc[1:3].itertuples()
            for t in patterned.loc[patterned["pattern_id"] == row.pattern_id, "truth"]} == set(spiking)
    assert out.loc[1:3, "ratio"].between(35, 44).all()
    assert (out.loc[1:3, "window_count"] > 250).all()
    assert out["window_count"].sum() == 982 and out["baseline_count"].sum() == 1018  # every line counted once


def test_compare_patterns_columns_and_statuses(ssh):
    out = ssh.theia.compare_patterns(("2015-12-10 10:50", "2015-12-10 11:05"))
    assert list(out.columns) == [
        "pattern_id", "pattern", "status", "score", "baseline_count", "window_count",
        "baseline_per_minute", "window_per_minute", "ratio", "first_seen", "last_seen", "sample",
    ]
    assert set(out["status"]) <= {"new", "spiking", "dropping", "gone", "steady"}
    gone = out[out["status"] == "gone"]
    assert (gone["window_count"] == 0).all() and (gone["baseline_count"] > 0).all() and (gone["ratio"] == 0).all()
    new = out[out["status"] == "new"]
    assert np.isinf(new["ratio"]).all()
    assert out["window_per_minute"].iloc[1] == pytest.approx(out["window_count"].iloc[1] / 15)
    # statuses come in their order, each by |score|
    ranks = out["status"].cat.codes.to_numpy()
    assert (np.diff(ranks) >= 0).all()
    # the sample of a window pattern is one of its window lines
    row = out.iloc[1]
    assert pattern_id(row["pattern"]) == row["pattern_id"]


def test_compare_patterns_of_two_frames_shares_one_miner(ssh):
    t0 = pd.Timestamp("2015-12-10 10:50", tz="UTC")
    base, window = ssh[ssh["timestamp"] < t0], ssh[ssh["timestamp"] >= t0]
    out = tf.compare_patterns(base, window)
    assert out.loc[0, "pattern"] == "fatal: Write failed: Connection reset by peer [preauth]"
    assert out["window_count"].sum() == len(window) and out["baseline_count"].sum() == len(base)


def test_compare_patterns_bad_input(ssh):
    with pytest.raises(UsageError, match="end after it starts"):
        tf.compare_patterns(ssh, ("2015-12-10 11:05", "2015-12-10 10:50"))
    with pytest.raises(UsageError, match="no line before"):
        tf.compare_patterns(ssh, ("2015-12-01", "2015-12-10 11:05"))
    with pytest.raises(UsageError, match="window must be"):
        tf.compare_patterns(ssh, "10:50")
    with pytest.raises(UsageError, match="time"):
        tf.compare_patterns(ssh, ("not a time", "2015-12-10 11:05"))


# --------------------------------------------------------------------------- the frame


def test_patterns_adds_two_category_columns_and_leaves_the_input_alone(ssh):
    before = ssh.copy(deep=True)
    out = tf.patterns(ssh)
    pd.testing.assert_frame_equal(ssh, before)
    assert "pattern" not in ssh.columns and out is not ssh
    assert list(out.columns) == [*ssh.columns, "pattern", "pattern_id"]
    assert isinstance(out["pattern"].dtype, pd.CategoricalDtype)
    assert isinstance(out["pattern_id"].dtype, pd.CategoricalDtype)
    assert out.attrs["theia_patterns"] == {"lines": 2000, "shapes": 198, "patterns": 25, "missing": 0, "unmatched": 0}
    row = out[out["content"] == "Invalid user webmaster from 173.234.31.186"].iloc[0]
    assert row["pattern"] == "Invalid user <*> from <*>"
    assert row["pattern_id"] == pattern_id("Invalid user <*> from <*>") == "d74faaa452c3f618"


def test_ids_are_stable_across_runs_orders_and_frames(ssh):
    first = tf.patterns(ssh)
    again = tf.patterns(ssh)
    assert first["pattern_id"].astype(str).tolist() == again["pattern_id"].astype(str).tolist()
    shuffled = tf.patterns(ssh.sample(frac=1.0, random_state=3)).sort_index()
    assert first["pattern_id"].astype(str).tolist() == shuffled["pattern_id"].astype(str).tolist()
    # another frame that holds the same kind of line gives it the same id
    other = tf.patterns(pd.DataFrame({"content": ["Invalid user zed from 10.9.8.7", "Invalid user amy from 10.1.1.1"]}))
    assert set(other["pattern_id"].astype(str)) == {"d74faaa452c3f618"}


def test_missing_lines_have_no_pattern_and_are_counted():
    df = pd.DataFrame({"content": pd.array(["disk 91% full", None, "disk 97% full"], dtype="string[pyarrow]")})
    out = tf.patterns(df)
    assert out["pattern"].isna().tolist() == [False, True, False]
    assert out.attrs["theia_patterns"]["missing"] == 1
    assert out["pattern"].iloc[0] == "disk <*> full"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="ab SOCKS5 ssh2 0123456789 .:=,-_/()[]'\"ü€x0fF@", max_size=40), min_size=1, max_size=30))
def test_grouping_by_zeroed_digits_gives_every_line_its_own_masked_form(lines):
    values = pd.Series(lines, dtype="string[pyarrow]")
    shapes, rows = PatternMiner().shapes(values)
    expected = mask_values(pa.array(lines, pa.string())).to_pylist()
    assert [shapes[r] for r in rows] == expected
    assert len(set(shapes)) == len(shapes) == len(set(expected))  # every shape used, none twice


def test_a_slice_of_a_column_has_the_shapes_of_a_copy(ssh):
    whole = pa.array(ssh["content"].tolist(), pa.string())
    piece = whole.slice(37, 1463)
    assert piece.offset == 37  # the strings start 37 entries into the buffers
    sliced, rows = PatternMiner()._shape_texts(piece)  # what shapes() runs on the column's Arrow array
    copied, rows_copy = PatternMiner().shapes(pd.Series(ssh["content"].iloc[37:1500].tolist(), dtype="string[pyarrow]"))
    assert [sliced[r] for r in rows] == [copied[r] for r in rows_copy]
    assert [sliced[r] for r in rows] == mask_values(piece).to_pylist()


def test_object_and_category_columns_give_the_same_patterns(ssh):
    as_text = tf.patterns(ssh)["pattern_id"].astype(str).tolist()
    as_object = tf.patterns(ssh.assign(content=ssh["content"].astype(object)))["pattern_id"].astype(str).tolist()
    as_category = tf.patterns(ssh.assign(content=ssh["content"].astype("category")))["pattern_id"].astype(str).tolist()
    assert as_text == as_object == as_category


def test_custom_masks_and_parameters():
    df = pd.DataFrame({"content": ["session opened for user alice", "session opened for user bob", "port 22 open"]})
    out = tf.patterns(df, masks=[(r"user \w+", "user <USER>")])
    assert out["pattern"].iloc[0] == "session opened for user <USER>"
    strict = tf.patterns(df, sim_th=1.0)  # without the mask, a word that differs is a different template
    assert strict["pattern"].tolist() == ["session opened for user alice", "session opened for user bob", "port <*> open"]
    typed = tf.patterns(df, sim_th=1.0, masks=[(r"user \w+", "user <USER>")])
    assert typed["pattern"].nunique() == 2
    raw = tf.patterns(pd.DataFrame({"content": ["port 22 open", "port 8080 open", "port 22 open"]}), miner=PatternMiner(default_masks=False, sim_th=1.0))
    assert raw["pattern"].tolist() == ["port 22 open", "port 8080 open", "port 22 open"]
    with pytest.raises(UsageError, match="not a valid RE2 pattern"):
        tf.patterns(df, masks=[("(", "x")])
    with pytest.raises(UsageError, match="pair"):
        tf.patterns(df, masks=["user"])
    with pytest.raises(UsageError, match="sim_th"):
        PatternMiner(sim_th=2)
    with pytest.raises(UsageError, match="belong to the miner"):
        tf.patterns(df, miner=PatternMiner(), sim_th=0.5)
    with pytest.raises(UsageError, match="column 'message'"):
        tf.patterns(df, "message")


def test_a_trained_miner_gives_another_frame_the_same_templates(ssh):
    t0 = pd.Timestamp("2015-12-10 10:50", tz="UTC")
    first, second = ssh[ssh["timestamp"] < t0], ssh[ssh["timestamp"] >= t0]
    miner = tf.PatternMiner()
    learnt = tf.patterns(first, miner=miner)
    known = miner.templates()
    assert list(known.columns) == ["pattern_id", "pattern", "shapes"] and len(known) == learnt["pattern_id"].nunique()
    applied = tf.patterns(second, miner=miner, learn=False)
    assert len(miner.templates()) == len(known)  # nothing learnt
    # the fatal line is of a kind the first frame never had: no pattern, counted
    fatal = applied["content"].str.startswith("fatal: Write failed")
    assert applied.loc[fatal, "pattern"].isna().all()
    assert applied.attrs["theia_patterns"]["unmatched"] == applied["pattern"].isna().sum() >= 1
    # a kind of line both have gets the id the first frame gave it
    ids_first = dict(zip(learnt["truth"], learnt["pattern_id"].astype(str)))
    matched = applied[applied["pattern"].notna()]
    assert len(matched) > 900
    assert all(ids_first[t] == i for t, i in zip(matched["truth"], matched["pattern_id"].astype(str)) if t in ids_first)
    # learning more keeps the miner going
    grown = tf.patterns(second, miner=miner)
    assert grown["pattern"].notna().all() and len(miner.templates()) > len(known)


def test_a_miner_pickles_with_what_it_learnt(ssh):
    miner = tf.PatternMiner()
    first = tf.patterns(ssh, miner=miner)
    restored = pickle.loads(pickle.dumps(miner))
    again = tf.patterns(ssh, miner=restored, learn=False)
    assert again["pattern_id"].astype(str).tolist() == first["pattern_id"].astype(str).tolist()
    assert again.attrs["theia_patterns"]["unmatched"] == 0
    assert repr(restored) == repr(miner)


def test_missing_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "drain3", None)
    monkeypatch.setitem(sys.modules, "drain3.drain", None)
    with pytest.raises(MissingDependencyError, match=r"theia-frames\[patterns\]") as info:
        tf.patterns(pd.DataFrame({"content": ["a 1"]}))
    assert info.value.extra == "patterns"


# --------------------------------------------------------------------------- counts


def test_pattern_counts_rare_patterns_and_bucket(ssh):
    out = tf.patterns(ssh)
    counts = tf.pattern_counts(out)
    assert list(counts.columns) == ["pattern_id", "pattern", "count", "share", "first_seen", "last_seen", "sample"]
    assert counts["count"].sum() == 2000 and counts["count"].is_monotonic_decreasing
    assert counts["share"].sum() == pytest.approx(1.0)
    assert counts.loc[0, "pattern"] == "Received disconnect from <*>: <*>: Bye Bye [preauth]"
    # a frame without patterns gets them first
    assert tf.pattern_counts(ssh)["count"].tolist() == counts["count"].tolist()

    per_hour = tf.pattern_counts(out, every="1h")
    assert per_hour["count"].sum() == 2000 and per_hour["bucket"].nunique() == 6  # 06:00 to 11:00
    assert str(per_hour["bucket"].dt.tz) == "UTC"
    per_source = tf.pattern_counts(out, by="source")
    assert per_source["count"].sum() == 2000 and set(per_source["source"]) == {"LabSZ"}
    with pytest.raises(UsageError, match="per pattern already"):
        tf.pattern_counts(out, by="pattern")

    rare = tf.rare_patterns(out, max_count=1)
    assert (rare["count"] == 1).all() and len(rare) == (counts["count"] == 1).sum()
    assert rare["first_seen"].is_monotonic_increasing

    wide = tf.bucket(out, "1min", by="pattern")
    assert wide.to_numpy().sum() == 2000 and wide.shape[1] == counts.shape[0]
    assert wide["fatal: Write failed: Connection reset by peer [preauth]"].sum() == 1


def test_accessor(ssh):
    out = ssh.theia.patterns()
    assert out["pattern_id"].astype(str).tolist() == tf.patterns(ssh)["pattern_id"].astype(str).tolist()
    assert out.theia.pattern_counts()["count"].sum() == 2000
    assert (out.theia.rare_patterns(max_count=2)["count"] <= 2).all()
    assert out.theia.compare_patterns(("2015-12-10 10:50", "2015-12-10 11:05")).loc[0, "status"] == "new"


# --------------------------------------------------------------------------- Dask


def test_dask_patterns_give_the_in_memory_ids(ssh):
    dd = pytest.importorskip("dask.dataframe")
    import theia_frames.frames.dask  # noqa: F401  (registers ddf.theia)

    frame = ssh.drop(columns=["truth"])
    ddf = dd.from_pandas(frame, npartitions=4)
    lazy = ddf.theia.patterns()
    computed = lazy.compute()
    expected = tf.patterns(frame)
    assert computed["pattern_id"].astype(str).tolist() == expected["pattern_id"].astype(str).tolist()
    assert computed["pattern"].astype(str).tolist() == expected["pattern"].astype(str).tolist()
    # a miner trained in memory applies to the partitions as it is
    miner = tf.PatternMiner()
    tf.patterns(frame, miner=miner)
    again = ddf.theia.patterns(miner=miner, learn=False).compute()
    assert again["pattern_id"].astype(str).tolist() == expected["pattern_id"].astype(str).tolist()
