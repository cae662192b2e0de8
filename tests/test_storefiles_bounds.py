"""read_store on damaged and hostile folders: bounded memory, a bounded report, our errors only.

Scaled down; ``python scripts/attack_client.py --store`` runs the full-size cases.
"""

from __future__ import annotations

import os
import tracemalloc
import warnings
from pathlib import Path

import pytest

from theia_frames.frames import storefiles
from theia_frames.protocol.codec import encode
from theia_frames.event import Event
from theia_frames.exceptions import UsageError
from theia_frames.frames.storefiles import MAX_DAMAGE_KEPT, DamagedStoreWarning, StoreReport, iter_store_batches, read_store

T0 = 1_700_000_000


def _events(start, n):
    return [Event(id=f"e{start + i}", timestamp=start + i, source="/dev/s", content=f"{i}") for i in range(n)]


def _store(evs):
    return b"".join(encode(e) + b"\n" for e in evs)


def _quiet_read(path, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = read_store(path, **kw)
    return df, [w for w in caught if issubclass(w.category, DamagedStoreWarning)]


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    (root / f"{T0}-{T0 + 60}").write_bytes(_store(_events(T0, 3)))
    (root / f"{T0 + 120}-{T0 + 180}").write_bytes(_store(_events(T0 + 120, 3)))
    return root


# --------------------------------------------------------------------------- OS errors


def test_a_symlink_loop_named_like_a_data_file_is_a_damage_entry(folder):
    loop = folder / f"{T0 + 60}-{T0 + 120}"
    os.symlink(loop.name, loop)  # points at itself
    df, warned = _quiet_read(folder)
    assert len(df) == 6
    report = df.attrs["theia_report"]
    (damage,) = report.damage
    assert damage.file == loop.name and "symbolic links" in damage.reason
    assert warned and loop.name in str(warned[0].message)
    with pytest.raises(UsageError, match=f"{loop.name}.*symbolic links"):
        read_store(folder, strict=True)


@pytest.mark.parametrize("kind", ["folder", "pipe"])
def test_a_folder_or_a_pipe_named_like_a_data_file_is_a_damage_entry(folder, kind):
    odd = folder / f"{T0 + 60}-{T0 + 120}"
    odd.mkdir() if kind == "folder" else os.mkfifo(odd)
    df, warned = _quiet_read(folder)  # a pipe is never opened: this would block
    assert len(df) == 6
    (damage,) = df.attrs["theia_report"].damage
    assert damage.file == odd.name and f"a {kind}" in damage.reason


def test_a_store_path_that_cannot_be_read_is_our_error(tmp_path, monkeypatch):
    loop = tmp_path / "loop"
    os.symlink(loop.name, loop)
    with pytest.raises(UsageError, match="cannot read the store .*loop.*symbolic links"):
        read_store(loop)

    def refused(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(storefiles.os, "scandir", refused)
    with pytest.raises(UsageError, match="cannot list the store folder .*Permission denied"):
        read_store(tmp_path)


# --------------------------------------------------------------------------- a bounded report


def test_the_report_counts_every_damaged_region_and_keeps_the_first(tmp_path):
    n = MAX_DAMAGE_KEPT + 500
    good = _events(T0, n)
    data = b"".join(b"broken line %d\n" % i + encode(e) + b"\n" for i, e in enumerate(good))
    (tmp_path / f"{T0}-{T0 + 60}").write_bytes(data)
    df, warned = _quiet_read(tmp_path)
    assert len(df) == n
    report = df.attrs["theia_report"]
    assert report.damaged == n and len(report.damage) == MAX_DAMAGE_KEPT and not report.ok
    assert report.damage[0].offset == 0 and report.damage[-1].reason.startswith("no preamble")
    summary = report.summary()
    assert f"{n} damaged region(s)" in summary and f"and {n - 20} more" in summary
    assert len(summary.splitlines()) < 30
    assert str(warned[0].message) == summary


def test_millions_of_broken_preambles_in_a_row_are_one_region(tmp_path):
    junk = b"event:\n\n" * 1_000_000  # 8 MB
    (tmp_path / f"{T0}-{T0 + 60}").write_bytes(junk + _store(_events(T0, 2)))
    df, _ = _quiet_read(tmp_path)
    report = df.attrs["theia_report"]
    assert len(df) == 2
    assert report.damaged == 1 and report.skipped_bytes == len(junk)


def test_a_reason_is_cut_to_a_few_hundred_characters(tmp_path):
    header = b"k" * 100_000 + b":v\n"
    bad = b"event: %d %d 0\n" % (len(header), len(header)) + header + b"\n"
    (tmp_path / f"{T0}-{T0 + 60}").write_bytes(bad + _store(_events(T0, 1)))
    df, _ = _quiet_read(tmp_path)
    (damage,) = df.attrs["theia_report"].damage
    assert len(df) == 1 and len(damage.reason) < 400


# --------------------------------------------------------------------------- bounded memory


def _peak_python_bytes(fn):
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_sparse_file_is_read_in_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(storefiles, "READ_PIECE", 1 << 20)
    sparse = tmp_path / f"{T0}-{T0 + 60}"
    with open(sparse, "wb") as f:
        f.truncate(300 * 1024 * 1024)  # 300 MB of zeros, no disk used
    with open(sparse, "ab") as f:
        f.write(b"\n" + _store(_events(T0, 2)))
    report = StoreReport()
    peak = _peak_python_bytes(lambda: [b for b in iter_store_batches(tmp_path, report=report)])
    assert report.events == 2 and report.damaged == 1
    assert peak < 16 * 1024 * 1024, f"reading a 300 MB file held {peak / 2**20:.0f} MiB"


def test_an_event_declaring_gigabytes_is_damage_not_a_buffer(tmp_path, monkeypatch):
    monkeypatch.setattr(storefiles, "READ_PIECE", 1 << 20)
    path = tmp_path / f"{T0}-{T0 + 60}"
    with open(path, "wb") as f:
        f.write(b"event: 3000000000 10 2999999990\n")
        f.truncate(200 * 1024 * 1024)
    with open(path, "ab") as f:
        f.write(b"\n" + _store(_events(T0, 1)))
    report = StoreReport()
    peak = _peak_python_bytes(lambda: list(iter_store_batches(tmp_path, report=report, max_event_size=32 << 20)))
    assert report.events == 1
    assert "more than the bound of 33554432" in report.damage[0].reason
    assert peak < 16 * 1024 * 1024
    with pytest.raises(UsageError, match="max_event_size"):
        list(iter_store_batches(tmp_path, max_event_size=0))


def test_a_large_event_within_the_bound_is_read_across_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(storefiles, "READ_PIECE", 4096)
    big = Event(id="big", timestamp=T0 + 1, content="x" * 100_000)
    (tmp_path / f"{T0}-{T0 + 60}").write_bytes(_store(_events(T0, 1)) + _store([big]) + _store(_events(T0 + 2, 1)))
    df, warned = _quiet_read(tmp_path)
    assert df["id"].tolist() == [f"e{T0}", "big", f"e{T0 + 2}"] and not warned
    assert len(list(iter_store_batches(tmp_path))) > 1  # a batch per piece read
    df, _ = _quiet_read(tmp_path, max_event_size=50_000)
    assert df["id"].tolist() == [f"e{T0}", f"e{T0 + 2}"]


def test_no_read_of_a_whole_file(folder, monkeypatch):
    def whole(self):  # pragma: no cover - what must not happen
        raise AssertionError(f"{self} was read whole")

    monkeypatch.setattr(Path, "read_bytes", whole)
    df, _ = _quiet_read(folder)
    assert len(df) == 6
