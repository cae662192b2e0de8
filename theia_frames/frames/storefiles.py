"""Read the upstream collector's file store straight into an event frame, without a server.

The upstream collector's plain-text store is a folder of files, each holding
about a minute of events concatenated in the upstream serialization (each
event followed by one extra newline), and named for its time span
``<first-second>-<last-second>``. :func:`read_store` reads such a folder (or
one such file) into the same DataFrame as :func:`~theia_frames.frames.convert.to_dataframe`,
and skips by name the files that end before the start of a time range::

    >>> import pathlib, tempfile
    >>> from theia_frames.protocol.codec import encode_many
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
file, byte offset and reason (the first few; all are counted)::

    >>> _ = (folder / "1700000060-1700000120").write_bytes(b"event: 99 3 96\\nid:")
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     df = read_store(folder)
    >>> len(df), caught[0].category.__name__
    (2, 'DamagedStoreWarning')
    >>> print(df.attrs["theia_report"].damage[0])
    1700000060-1700000120: byte 0: truncated event: declares 99 bytes after the preamble, 3 available

What a damaged or hostile folder can cost is bounded. Each file is read a
piece at a time (:data:`READ_PIECE` bytes), holding at most one incomplete
event besides, and an event declaring more than ``max_event_size`` bytes
(default :data:`DEFAULT_MAX_EVENT_SIZE`) is reported as damage, not read;
a file is read up to the size it had when opened. The report keeps the
first :data:`MAX_DAMAGE_KEPT` damaged regions and counts all of them
(``damaged``); its summary, and so the warning, lists the first 20. An entry
named like a data file that cannot be read (permission denied, a symbolic
link loop, a folder, a device or pipe) is a damage entry naming it, never an
``OSError``.
"""

from __future__ import annotations

import os
import re
import stat
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..protocol.arrow import columns_to_batch, event_schema
from ..protocol.codec import EventColumns, StreamDecoder
from ..checks import positive_int
from ..event import Event  # noqa: F401  (used by the doctests)
from ..exceptions import UsageError
from ..filter import EventFilter
from .convert import batches_to_dataframe, finish_frame, frame_columns, with_progress
from ..timeparse import to_bound

__all__ = [
    "read_store",
    "iter_store_batches",
    "store_files",
    "not_a_store",
    "StoreFile",
    "StoreReport",
    "Damage",
    "DamagedStoreWarning",
    "DEFAULT_MAX_EVENT_SIZE",
    "READ_PIECE",
    "MAX_DAMAGE_KEPT",
]

#: The largest event read (bytes after its preamble line); one declaring more is reported as damage.
DEFAULT_MAX_EVENT_SIZE = 64 * 1024 * 1024
#: Bytes read from a file at a time.
READ_PIECE = 8 * 1024 * 1024
#: Damaged regions kept in :attr:`StoreReport.damage`; the others are only counted.
MAX_DAMAGE_KEPT = 1000
# Damaged regions listed by StoreReport.summary() (and so in the warning).
_SUMMARY_DAMAGE = 20
# A reason longer than this is cut in a Damage entry.
_REASON_CHARS = 300

# A data file's name: its time span in whole seconds (before 1970: negative, "-10-49").
_NAME = re.compile(r"(-?\d+)-(-?\d+)")


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
    (e.g. the upstream store's temporary files); ``damaged`` counts the
    regions that could not be read (and the entries named like data files
    that could not be opened), ``damage`` lists the first
    :data:`MAX_DAMAGE_KEPT` of them and ``skipped_bytes`` is their total size.
    """

    path: str = ""
    files: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    events: int = 0
    damage: list[Damage] = field(default_factory=list)
    skipped_bytes: int = 0
    damaged: int = 0

    @property
    def ok(self) -> bool:
        """Whether everything read was intact."""
        return not self.damage and not self.damaged

    def _note(self, file: str, offset: int, reason: str, size: int = 0) -> None:
        """Count a damaged region; keep it if fewer than MAX_DAMAGE_KEPT are kept."""
        self.damaged += 1
        self.skipped_bytes += size
        if len(self.damage) < MAX_DAMAGE_KEPT:
            if len(reason) > _REASON_CHARS:
                reason = reason[:_REASON_CHARS] + "..."
            self.damage.append(Damage(file, offset, reason))

    def summary(self) -> str:
        """A few lines for people: counts, then each damaged region."""
        lines = [
            f"{self.path}: {self.events} events from {len(self.files)} file(s)"
            + (f", {len(self.outside)} outside the time range" if self.outside else "")
            + (f", {len(self.ignored)} other entr{'y' if len(self.ignored) == 1 else 'ies'} ignored" if self.ignored else "")
        ]
        count = max(self.damaged, len(self.damage))
        if count:
            lines.append(f"{count} damaged region(s), {self.skipped_bytes} bytes skipped:")
            shown = self.damage[:_SUMMARY_DAMAGE]
            lines.extend(f"  {d}" for d in shown)
            if count > len(shown):
                lines.append(
                    f"  ... and {count - len(shown)} more"
                    + (f" (the first {len(self.damage)} are in the report's damage list)" if len(self.damage) > len(shown) else "")
                )
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
    """A read's ``start`` or ``end`` (``name``) as a filter's bound (a frame's time finds its event)."""
    if value is None:
        return None
    try:
        return to_bound(value, name)
    except UsageError as exc:
        raise UsageError(f"read_store {name}: {exc}") from None


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def store_files(
    path: str | os.PathLike[str], *, start: Any = None, end: Any = None, report: StoreReport | None = None
) -> list[StoreFile]:
    """The data files of a store folder (or the one file ``path``) that may hold events in ``[start, end]``
    (every file whose last second is not before ``start``, see :meth:`StoreFile.outside`).

    In time order. Files skipped by name and entries that are not data files
    are listed in ``report``; an entry named like a data file that is not a
    readable regular file (a folder, a symbolic link loop, a pipe, ...) is a
    damage entry there. A ``path`` that cannot be read raises
    :class:`~theia_frames.exceptions.UsageError` naming it.
    """
    root = Path(path)
    report = report if report is not None else StoreReport()
    report.path = str(root)
    lo, hi = _seconds(start, "start"), _seconds(end, "end")
    if lo is not None and hi is not None and hi < lo:
        raise UsageError(f"read_store end {end!r} is before start {start!r}")
    try:
        mode = os.stat(root).st_mode
    except FileNotFoundError:
        raise UsageError(f"no such store folder or file: {root}") from None
    except (OSError, ValueError) as exc:
        why = _why(exc) if isinstance(exc, OSError) else str(exc)
        raise UsageError(f"cannot read the store {root}: {why}") from None
    if stat.S_ISREG(mode):
        m = _NAME.fullmatch(root.name)
        candidates = [StoreFile(int(m[1]), int(m[2]), root) if m else StoreFile(None, None, root)]
    elif stat.S_ISDIR(mode):
        try:
            with os.scandir(root) as listing:
                entries = sorted(((e.name, e) for e in listing), key=lambda pair: pair[0])
        except OSError as exc:
            raise UsageError(f"cannot list the store folder {root}: {_why(exc)}") from None
        candidates = []
        for name, entry in entries:
            m = _NAME.fullmatch(name)
            if not m:
                report.ignored.append(name)
                continue
            f = StoreFile(int(m[1]), int(m[2]), Path(entry.path))
            if f.outside(lo):
                candidates.append(f)  # skipped below without being looked at
                continue
            try:
                entry_mode = entry.stat().st_mode
            except OSError as exc:
                report._note(name, 0, f"cannot read the file: {_why(exc)}")
                continue
            if not stat.S_ISREG(entry_mode):
                report._note(name, 0, f"named like a data file but {_kind(entry_mode)}: not read")
                continue
            candidates.append(f)
        candidates.sort(key=lambda f: (f.first, f.last, f.path.name))
    else:
        raise UsageError(f"not a store folder or file: {root} is {_kind(mode)}")
    chosen = []
    for f in candidates:
        if f.outside(lo):
            report.outside.append(f.path.name)
        else:
            chosen.append(f)
    return chosen


def not_a_store(path: str | os.PathLike[str]) -> str | None:
    """Why the file ``path`` is plainly not an upstream store file (a log file, say), or None.

    It is not when its first bytes are not an event's preamble (``event:``).

    >>> import tempfile
    >>> log = Path(tempfile.mkdtemp()) / "app.log"
    >>> _ = log.write_text("Dec 10 06:55:46 host sshd[1]: hi\\n")
    >>> not_a_store(log)
    "its first line is not an event ('event: ...'): 'Dec 10 06:55:46 host sshd[1]: hi'"
    """
    root = Path(path)
    try:
        if root.is_file():
            with open(root, "rb") as f:
                head = f.read(200)
            if head and not head.lstrip().startswith(b"event:"):
                first = head.split(b"\n", 1)[0].decode("utf-8", "replace").rstrip()
                return f"its first line is not an event ('event: ...'): {first!r}"
    except OSError:
        return None  # said by the reading itself, with its reason
    return None


def _open(path: Path) -> tuple[int, int]:
    """A file descriptor and the size of a regular file (OSError otherwise; never blocks on a pipe)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{_kind(st.st_mode)}, not a data file")
    except BaseException:
        try:
            os.close(fd)
        except OSError:
            pass
        raise
    return fd, st.st_size


def _file_columns(
    f: StoreFile, *, strict: bool, report: StoreReport, max_event_size: int, piece: int
) -> Iterator[EventColumns]:
    """The events of one file as columns, a piece at a time; damage is noted in ``report``
    (or raises with ``strict``)."""
    name = f.path.name
    try:
        fd, size = _open(f.path)
    except OSError as exc:
        if strict:
            raise UsageError(f"cannot read store file {f.path}: {_why(exc)}") from None
        report._note(name, 0, f"cannot read the file: {_why(exc)}")
        return
    report.files.append(name)

    def damaged(offset: int, reason: str, nbytes: int) -> None:
        report._note(name, offset, reason, nbytes)

    decoder = StreamDecoder(strict=strict, max_event=max_event_size, on_damage=damaged, name=name)
    try:
        left = size
        while left > 0:
            try:
                data = os.read(fd, min(piece, left))
            except OSError as exc:
                if strict:
                    raise UsageError(f"cannot read store file {f.path} at byte {size - left}: {_why(exc)}") from None
                report._note(name, size - left, f"cannot read the file from here on: {_why(exc)}", left)
                break
            if not data:
                break  # cut short while being read: what is there is read
            left -= len(data)
            decoder.feed(data)
            cols = decoder.take()
            if len(cols):
                yield cols
        decoder.finish()
        cols = decoder.take()
        if len(cols):
            yield cols
    finally:
        try:
            os.close(fd)
        except OSError:
            pass  # everything was read already


def _in_range(batch: pa.RecordBatch, start: float | None, end: float | None) -> pa.RecordBatch:
    return EventFilter(start=start, end=end).match_time(batch)


def iter_store_batches(
    path: str | os.PathLike[str],
    *,
    start: Any = None,
    end: Any = None,
    strict: bool = False,
    report: StoreReport | None = None,
    max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
) -> Iterator[pa.RecordBatch]:
    """The events of a store as Arrow batches (event schema), in file order, one or more per file
    (a file is read :data:`READ_PIECE` bytes at a time).

    Events outside ``[start, end]`` are dropped; damage is skipped and recorded in
    ``report`` (or raises :class:`~theia_frames.exceptions.DecodeError` naming the file with ``strict=True``;
    a file that cannot be read then raises :class:`~theia_frames.exceptions.UsageError`).
    """
    max_event_size = positive_int("max_event_size", max_event_size)
    report = report if report is not None else StoreReport()
    lo, hi = _seconds(start, "start"), _seconds(end, "end")
    kept, counted = len(report.damage), report.damaged
    files = store_files(path, start=start, end=end, report=report)
    if strict and report.damaged > counted:
        first = report.damage[kept] if len(report.damage) > kept else Damage("?", 0, "cannot be read")
        raise UsageError(f"cannot read store file {Path(path) / first.file}: {first.reason}")
    for f in files:
        for cols in _file_columns(f, strict=strict, report=report, max_event_size=max_event_size, piece=READ_PIECE):
            batch = _in_range(columns_to_batch(cols), lo, hi)
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
    index: Literal["timestamp"] | None = None,
    tz: Any = None,
    columns: Any = None,
    progress: bool | None = None,
    max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
) -> pd.DataFrame:
    """The events of an upstream file store (a folder, or one of its files) as an event frame.

    ``start``/``end`` (seconds since the epoch, a datetime, or a time text such
    as ``"2024-05-01T12:00Z"``) keep the events in ``[start, end]``; files whose
    names end before ``start`` are not opened (a later file may hold an older
    event: the upstream collector appends late events to its newest file). ``sort`` orders the events by timestamp
    (stable; the store keeps them in arrival order). ``index``, ``tz``,
    ``columns`` and ``progress`` are those of :func:`~theia_frames.frames.convert.to_dataframe`.
    ``max_event_size`` is the largest event read, in bytes (see the module's bounds).

    Damage never stops the reading and is never silent: the :class:`StoreReport`
    is attached as ``df.attrs["theia_report"]`` (and filled into ``report`` when
    given), and a :class:`DamagedStoreWarning` lists the damaged regions. With
    ``strict=True`` the first damage raises :class:`~theia_frames.exceptions.DecodeError` instead.
    """
    cols = frame_columns(columns, index)
    report = report if report is not None else StoreReport()
    batches = list(
        with_progress(
            iter_store_batches(path, start=start, end=end, strict=strict, report=report, max_event_size=max_event_size),
            progress,
        )
    )
    if sort and batches:
        table = pa.Table.from_batches(batches, schema=event_schema())
        ts = table.column("timestamp")
        if len(ts) > 1 and not pc.all(pc.less_equal(ts.slice(0, len(ts) - 1), ts.slice(1))).as_py():
            # a stable sort: events of the same instant keep their stored order
            batches = table.take(pc.sort_indices(ts)).to_batches()
    df = batches_to_dataframe(batches, columns=cols)
    if not report.ok:
        warnings.warn(DamagedStoreWarning(report.summary()), stacklevel=2)
    df = finish_frame(df, index, tz)
    df.attrs["theia_report"] = report
    return df

