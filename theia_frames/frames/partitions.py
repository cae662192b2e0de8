"""How :func:`~theia_frames.frames.dask.to_dask` cuts a time range into partitions.

Three ways, as the source allows:

- by chunk counts: :func:`chunk_counts` asks a collector of this project how
  many events its stored chunks hold over time (the extension's ``/chunks``
  request, made by a :class:`~theia_frames.client.Client`), and :func:`time_slices` cuts so that
  each slice holds about as many events;
- by time: a peer that cannot tell (the upstream collector) is cut into
  slices of a fixed length (:data:`DEFAULT_PARTITION`, or ``partition=``);
- by store files: an upstream store folder is weighed by its files' names and
  sizes (:func:`store_layout`), and each slice reads the files that may hold
  its events (:func:`store_files_for`).

The cuts are whole microseconds (the frame's time resolution), in order, and
at most :data:`MAX_PARTITIONS`.

    >>> [t.isoformat() for t in time_slices(0.0, 5400.0, partition="1h")]
    ['1970-01-01T00:00:00+00:00', '1970-01-01T01:00:00+00:00', '1970-01-01T01:30:00+00:00']
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..client.sync import Client
from ..exceptions import UsageError
from ..filter import EventFilter, FilterLike
from .storefiles import store_files

__all__ = [
    "chunk_counts",
    "time_slices",
    "store_layout",
    "store_files_for",
    "DEFAULT_PARTITION_EVENTS",
    "DEFAULT_PARTITION",
    "MAX_PARTITIONS",
    "STORE_EVENT_BYTES",
]

#: Events per partition aimed at when the source can tell how many it holds over time.
DEFAULT_PARTITION_EVENTS = 500_000
#: The length of a partition when the source cannot tell (a pandas frequency).
DEFAULT_PARTITION = "1h"
#: Most partitions one frame may have (a graph of more would cost the driver more than the data).
MAX_PARTITIONS = 100_000
#: Bytes of the upstream store's text an event takes, about (store slices are weighed by file size).
STORE_EVENT_BYTES = 200


# --------------------------------------------------------------------------- the layout request


def chunk_counts(url: str, filter: FilterLike = None, **client_options: Any) -> list[tuple[float, float, int]] | None:
    """How many events the collector at ``url`` holds over ``filter``'s time range, from its index:
    ``(first timestamp, last timestamp, events)`` of its stored chunks, in time order; None when the
    peer does not speak the extension (the upstream collector).

    :meth:`Client.chunks <theia_frames.client.Client.chunks>` on a client of ``url`` made with
    ``client_options`` (``timeout``, ``token``, ``cafile``, ...): its settings, credentials, TLS and
    errors.
    """
    with Client(url, **client_options) as client:
        return client.chunks(filter)


# --------------------------------------------------------------------------- cutting slices


def _floor_us(seconds: float) -> int:
    return int(math.floor(round(seconds * 1e6, 3)))


def _ceil_us(seconds: float) -> int:
    return int(math.ceil(round(seconds * 1e6, 3)))


def _count_cuts(entries: Sequence[tuple[float, float, float]], start: float, end: float, parts: int) -> list[float]:
    """``parts - 1`` times inside ``(start, end)`` that split the events of ``entries`` (each spread
    evenly over its own span) into ``parts`` runs of about equal count."""
    los = np.array([max(lo, start) for lo, _, _ in entries], dtype=np.float64)
    his = np.array([min(hi, end) for _, hi, _ in entries], dtype=np.float64)
    counts = np.array([n for _, _, n in entries], dtype=np.float64)
    keep = (his >= los) & (counts > 0)
    los, his, counts = los[keep], his[keep], counts[keep]
    if not len(counts) or parts < 2:
        return []
    # The count up to time t is piecewise linear in t: a sweep over the spans' ends.
    widths = his - los
    point = widths <= 0
    rate = np.where(point, 0.0, counts / np.where(point, 1.0, widths))
    xs = np.unique(np.concatenate([los, his]))
    slope = np.zeros(len(xs))
    np.add.at(slope, np.searchsorted(xs, los[~point]), rate[~point])
    np.add.at(slope, np.searchsorted(xs, his[~point]), -rate[~point])
    slope = np.cumsum(slope)
    jumps = np.zeros(len(xs))
    np.add.at(jumps, np.searchsorted(xs, los[point]), counts[point])
    cdf = np.concatenate([[0.0], np.cumsum(slope[:-1] * np.diff(xs))]) + np.cumsum(jumps)
    total = cdf[-1]
    wanted = total * np.arange(1, parts) / parts
    return [float(t) for t in np.interp(wanted, cdf, xs) if start < t < end]


def time_slices(
    start: float,
    end: float,
    *,
    counts: Sequence[tuple[float, float, float]] | None = None,
    npartitions: int | None = None,
    partition: Any = None,
    partition_events: int = DEFAULT_PARTITION_EVENTS,
) -> list[pd.Timestamp]:
    """The divisions of a frame over ``[start, end]`` (seconds): whole microseconds, in order, the
    first at or before ``start``, the last at or after ``end``.

    ``partition`` (a pandas frequency such as ``"1h"``) cuts at its multiples;
    else with ``counts`` (as from :func:`chunk_counts`) the cuts give about
    ``partition_events`` events per slice, or ``npartitions`` slices of equal
    count; else ``npartitions`` equal spans, or :data:`DEFAULT_PARTITION` ones.

    >>> [t.isoformat() for t in time_slices(0.0, 7200.0, partition="1h")]
    ['1970-01-01T00:00:00+00:00', '1970-01-01T01:00:00+00:00', '1970-01-01T02:00:00+00:00']
    >>> len(time_slices(0.0, 100.0, counts=[(0.0, 50.0, 900), (50.0, 100.0, 100)], npartitions=2))
    3
    """
    if end < start:
        raise UsageError(f"the time range ends ({end}) before it starts ({start})")
    first, last = _floor_us(start), _ceil_us(end)
    cuts_us: list[int]
    if partition is not None:
        begin = pd.Timestamp(first, unit="us", tz="UTC")
        try:
            # a fixed length cuts at its multiples since the epoch (whole hours for "1h")
            anchor = begin.floor(partition) if _fixed(partition) else begin
            edges = pd.date_range(anchor, pd.Timestamp(last, unit="us", tz="UTC"), freq=partition)
        except (ValueError, TypeError) as exc:
            raise UsageError(f"invalid partition length {partition!r}: {exc}") from exc
        if len(edges) > MAX_PARTITIONS:
            raise UsageError(
                f"partition={partition!r} makes {len(edges)} partitions of this time range; at most {MAX_PARTITIONS}"
            )
        cuts_us = [int(t.value // 1000) for t in edges if first < t.value // 1000 < last]
    elif counts is not None:
        total = sum(n for _, _, n in counts)
        parts = npartitions if npartitions is not None else max(1, math.ceil(total / partition_events))
        if parts > MAX_PARTITIONS:
            raise UsageError(f"{parts} partitions would be needed; at most {MAX_PARTITIONS} (raise partition_events)")
        cuts_us = [_floor_us(t) for t in _count_cuts(counts, start, end, parts)]
    else:
        if npartitions is None:
            return time_slices(start, end, partition=DEFAULT_PARTITION)
        span = last - first
        cuts_us = [first + (span * i) // npartitions for i in range(1, npartitions)]
    bounds = sorted({first, last, *(c for c in cuts_us if first < c < last)})
    if len(bounds) == 1:
        bounds = bounds * 2
    return [pd.Timestamp(b, unit="us", tz="UTC") for b in bounds]


def _fixed(freq: Any) -> bool:
    try:
        pd.Timedelta(freq)
    except (ValueError, TypeError):
        return False
    return True


def store_layout(
    folder: str | os.PathLike[str], flt: EventFilter
) -> tuple[list[tuple[Any, float, float]], list[tuple[float, float, float]]]:
    """The store's data files that may hold events of ``flt`` (with their name's span), and their
    spans weighed by size (what a file holds, as far as its name and size tell)."""
    files = store_files(folder, start=flt.start, end=flt.end)
    named = [(f, float(f.first), float(f.last + 1)) for f in files if f.first is not None and f.last is not None]
    if len(named) != len(files):
        odd = [str(f.path) for f in files if f.first is None or f.last is None]
        raise UsageError(f"to_dask reads a store folder of files named <first>-<last>; cannot place {odd[:3]}")
    weights = []
    for f, lo, hi in named:
        try:
            size = float(f.path.stat().st_size)
        except OSError:
            size = 0.0
        weights.append((lo, hi, size))
    return named, weights


def store_files_for(named: Sequence[tuple[Any, float, float]], lo: float, hi: float, last: bool) -> tuple[str, ...]:
    """The files that may hold an event in ``[lo, hi)``: from the first whose last second reaches
    ``lo`` through the first whose last second reaches ``hi``. The upstream store puts an event in
    the first file whose span ends after it, so a file may hold events older than its name's first
    second (a late event), never newer than its last."""
    chosen = []
    for f, _, end in named:
        if end <= lo:
            continue
        chosen.append(str(f.path))
        if end >= hi and not last:
            break
    return tuple(chosen)
