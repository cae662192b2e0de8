"""Read the upstream collector's file store straight into an event frame, without a server.

The upstream collector's plain-text store is a folder of files, each holding
about a minute of events concatenated in the upstream serialization (each
event followed by one extra newline), and named for its time span
``<first-second>-<last-second>``. :func:`read_store` reads such a folder (or
one such file) into the same DataFrame as :func:`~theia_frames.frames.to_dataframe`,
and skips by name the files that end before the start of a time range::

    >>> import pathlib, tempfile
    >>> from theia_frames.codec import encode_many
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "1700000000-1700000060").write_bytes(encode_many(
    ...     [Event(id="a", timestamp=1700000001.5, source="/dev/door", content="open"),
    ...      Event(id="b", timestamp=1700000002.0, source="/dev/door", content="closed")]))
    >>> df = read_store(folder)
    >>> df[["id", "content"]]
      id content
    0  a    open
    1  b  closed
    >>> df.attrs["theia_report"].ok
    True

A damaged file (cut short, garbage in the middle) does not stop the reading:
every intact event is read, and what was skipped is reported — in the
:class:`StoreReport` attached as ``df.attrs["theia_report"]`` (and filled in
when passed as ``report=``) and in a :class:`DamagedStoreWarning` naming each
file, byte offset and reason::

    >>> _ = (folder / "1700000060-1700000120").write_bytes(b"event: 99 3 96\\nid:")
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     df = read_store(folder)
    >>> len(df), caught[0].category.__name__
    (2, 'DamagedStoreWarning')
    >>> print(df.attrs["theia_report"].damage[0])
    1700000060-1700000120: byte 0: truncated event: declares 99 bytes after the preamble, 3 available
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .batch import columns_to_batch, event_schema
from .codec import EventColumns, StreamReport, iter_decode_stream
from .event import Event  # noqa: F401  (used by the doctests)
from .exceptions import DecodeError, UsageError
from .frames import _check_columns, _check_index, _finish, _with_progress, batches_to_dataframe
from .timeparse import to_epoch

__all__ = [
    "read_store",
    "iter_store_batches",
    "store_files",
    "StoreFile",
    "StoreReport",
    "Damage",
    "DamagedStoreWarning",
]

# A data file's name: its time span in whole seconds.
_NAME = re.compile(r"(\d+)-(\d+)")


class DamagedStoreWarning(UserWarning):
    """Part of a store could not be read; the message says which file, where and why."""


@dataclass(frozen=True)
class Damage:
    """A damaged region of a store file: where it starts and why it could not be read."""

    file: str
    offset: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: byte {self.offset}: {self.reason}"


@dataclass
class StoreReport:
    """What reading a store did: files read and skipped, events read, damage found.

    ``files`` were read; ``outside`` were skipped by name (outside the time
    range); ``ignored`` are entries of the folder that are not data files
    (e.g. the upstream store's temporary files); ``damage`` lists every region
    that could not be read and ``skipped_bytes`` their total size.
    """

    path: str = ""
    files: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    events: int = 0
    damage: list[Damage] = field(default_factory=list)
    skipped_bytes: int = 0

    @property
    def ok(self) -> bool:
        """Whether everything read was intact."""
        return not self.damage

    def summary(self) -> str:
        """A few lines for people: counts, then each damaged region."""
        lines = [
            f"{self.path}: {self.events} events from {len(self.files)} file(s)"
            + (f", {len(self.outside)} outside the time range" if self.outside else "")
            + (f", {len(self.ignored)} other entr{'y' if len(self.ignored) == 1 else 'ies'} ignored" if self.ignored else "")
        ]
        if self.damage:
            lines.append(f"{len(self.damage)} damaged region(s), {self.skipped_bytes} bytes skipped:")
            lines.extend(f"  {d}" for d in self.damage)
        return "\n".join(lines)

    __str__ = summary


@dataclass(frozen=True, order=True)
class StoreFile:
    """A data file of a store and the span of seconds its name gives (None for a file named otherwise)."""

    first: int | None
    last: int | None
    path: Path

    def outside(self, start: float | None) -> bool:
        """Whether the name proves the file holds no event at or after ``start``.

        Names are whole seconds (the first and last event's, or first + 60): a
        file may hold events up to the end of its last second. The upstream
        collector appends an event older than its newest file to that file, so
        a file named ``<a>-<b>`` may hold events older than ``a``: a file after
        the end of a time range can still hold events inside it, and only the
        last second says anything.
        """
        if self.first is None or self.last is None or start is None:
            return False
        return self.last + 1 <= start


def _seconds(value: Any, name: str) -> float | None:
    if value is None:
        return None
    try:
        return to_epoch(value)
    except UsageError as exc:
        raise UsageError(f"read_store {name}: {exc}") from None


def store_files(
    path: str | os.PathLike[str], *, start: Any = None, end: Any = None, report: StoreReport | None = None
) -> list[StoreFile]:
    """The data files of a store folder (or the one file ``path``) that may hold events in ``[start, end]``
    (every file whose last second is not before ``start``, see :meth:`StoreFile.outside`).

    In time order. Files skipped by name and entries that are not data files
    are listed in ``report``.
    """
    root = Path(path)
    report = report if report is not None else StoreReport()
    report.path = str(root)
    lo, hi = _seconds(start, "start"), _seconds(end, "end")
    if lo is not None and hi is not None and hi < lo:
        raise UsageError(f"read_store end {end!r} is before start {start!r}")
    if root.is_file():
        m = _NAME.fullmatch(root.name)
        candidates = [StoreFile(int(m[1]), int(m[2]), root) if m else StoreFile(None, None, root)]
    elif root.is_dir():
        candidates = []
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            m = _NAME.fullmatch(entry.name)
            if m and entry.is_file():
                candidates.append(StoreFile(int(m[1]), int(m[2]), Path(entry.path)))
            else:
                report.ignored.append(entry.name)
        candidates.sort(key=lambda f: (f.first, f.last, f.path.name))
    elif root.exists():
        raise UsageError(f"not a store folder or file: {root}")
    else:
        raise UsageError(f"no such store folder or file: {root}")
    chosen = []
    for f in candidates:
        if f.outside(lo):
            report.outside.append(f.path.name)
        else:
            chosen.append(f)
    return chosen


def _decode_file(data: bytes, name: str, *, strict: bool, report: StoreReport) -> EventColumns:
    """The events of one file as columns; damaged regions are skipped and reported (or raise if strict)."""
    cols = EventColumns()
    body = data.lstrip(b"\r\n")
    if not body:
        return cols
    try:
        cols.append_raw(body)
        return cols
    except DecodeError as exc:
        if strict:
            raise DecodeError(f"{name}: {exc.reason}", data, exc.offset + len(data) - len(body)) from None
    # Damaged: read it again event by event, resynchronising after each damaged
    # region at the next line that starts a new event.
    cols = EventColumns()
    stream = StreamReport()
    for event in iter_decode_stream(data, strict=False, report=stream):
        cols.append_event(event)
    for offset, reason in stream.skipped:
        report.damage.append(Damage(name, offset, reason))
    report.skipped_bytes += stream.skipped_bytes
    return cols


def _in_range(batch: pa.RecordBatch, start: float | None, end: float | None) -> pa.RecordBatch:
    if start is None and end is None:
        return batch
    ts = batch.column("timestamp")
    keep = None
    if start is not None:
        keep = pc.greater_equal(ts, start)
    if end is not None:
        below = pc.less_equal(ts, end)
        keep = below if keep is None else pc.and_(keep, below)
    return batch.filter(keep)


def iter_store_batches(
    path: str | os.PathLike[str],
    *,
    start: Any = None,
    end: Any = None,
    strict: bool = False,
    report: StoreReport | None = None,
) -> Iterator[pa.RecordBatch]:
    """The events of a store as one Arrow batch per file (event schema), in file order.

    Events outside ``[start, end]`` are dropped; damage is skipped and recorded in
    ``report`` (or raises :class:`DecodeError` naming the file with ``strict=True``).
    """
    report = report if report is not None else StoreReport()
    lo, hi = _seconds(start, "start"), _seconds(end, "end")
    for f in store_files(path, start=start, end=end, report=report):
        name = f.path.name
        try:
            data = f.path.read_bytes()
        except OSError as exc:
            if strict:
                raise UsageError(f"cannot read store file {f.path}: {exc.strerror or exc}") from exc
            report.damage.append(Damage(name, 0, f"cannot read the file: {exc.strerror or exc}"))
            continue
        report.files.append(name)
        batch = _in_range(columns_to_batch(_decode_file(data, name, strict=strict, report=report)), lo, hi)
        report.events += batch.num_rows
        if batch.num_rows:
            yield batch


def read_store(
    path: str | os.PathLike[str],
    *,
    start: Any = None,
    end: Any = None,
    strict: bool = False,
    report: StoreReport | None = None,
    sort: bool = True,
    index: str | None = None,
    tz: Any = None,
    columns: Any = None,
    progress: bool | None = None,
) -> pd.DataFrame:
    """The events of an upstream file store (a folder, or one of its files) as an event frame.

    ``start``/``end`` (seconds since the epoch, a datetime, or a time text such
    as ``"2024-05-01T12:00Z"``) keep the events in ``[start, end]``; files whose
    names end before ``start`` are not opened (a later file may hold an older
    event: the upstream collector appends late events to its newest file). ``sort`` orders the events by timestamp
    (stable; the store keeps them in arrival order). ``index``, ``tz``,
    ``columns`` and ``progress`` are those of :func:`~theia_frames.frames.to_dataframe`.

    Damage never stops the reading and is never silent: the :class:`StoreReport`
    is attached as ``df.attrs["theia_report"]`` (and filled into ``report`` when
    given), and a :class:`DamagedStoreWarning` lists the damaged regions. With
    ``strict=True`` the first damage raises :class:`DecodeError` instead.
    """
    cols = _check_index(index, _check_columns(columns))
    report = report if report is not None else StoreReport()
    batches = list(_with_progress(iter_store_batches(path, start=start, end=end, strict=strict, report=report), progress))
    if sort and batches:
        table = pa.Table.from_batches(batches, schema=event_schema())
        ts = table.column("timestamp")
        if len(ts) > 1 and not pc.all(pc.less_equal(ts.slice(0, len(ts) - 1), ts.slice(1))).as_py():
            # a stable sort: events of the same instant keep their stored order
            batches = table.take(pc.sort_indices(ts)).to_batches()
    df = batches_to_dataframe(batches, columns=cols)
    if report.damage:
        warnings.warn(DamagedStoreWarning(report.summary()), stacklevel=2)
    df = _finish(df, index, tz)
    df.attrs["theia_report"] = report
    return df

