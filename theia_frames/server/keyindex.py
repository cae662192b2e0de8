"""The identity keys of an event store's newest chunks, kept in memory, so that the
duplicate check of a commit compares keys without decompressing stored chunks.

A chunk's keys (:class:`ChunkKeys`) are its events' timestamps, their microseconds
(:func:`~theia_frames.server.chunks.identity_micros`, in the chunk's row order, which is
time order) and their ids: events of equal microseconds alone are compared by identity key
(:func:`~theia_frames.server.chunks.sort_keys`), so a chunk stored costs no key building.
:class:`KeyIndex` holds them by chunk number for at most :data:`KEY_INDEX_BYTES`
bytes: when a chunk's keys would go past that, the chunks of the lowest numbers (the
oldest) leave first. Chunk numbers are never reused and a stored chunk never changes,
so the keys of a number stay true as long as that chunk exists; a chunk whose keys
are not held is read from the store (its id and timestamp columns alone), so what
is stored never depends on what the index holds::

    >>> import numpy as np, pyarrow as pa
    >>> index = KeyIndex(limit=1_100)
    >>> index.put(1, ChunkKeys.of(np.array([1.0, 2.0]), pa.array(["a", "b"])))
    >>> index.get(1).micros.tolist(), index.get(2)
    ([1000000, 2000000], None)
    >>> index.put(2, ChunkKeys.of(np.arange(50.0), pa.array([str(i) for i in range(50)])))
    >>> index.seqs(), index.nbytes
    ([2], 1090)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from ..checks import positive_int
from .chunks import identity_micros, sort_keys

__all__ = ["ChunkKeys", "KeyIndex", "KEY_INDEX_BYTES"]

#: Most bytes of keys an event store keeps in memory (about a million events of ids of
#: ten characters: 8 bytes of timestamp, 8 of microseconds, 10 of id and 4 of offset each).
KEY_INDEX_BYTES = 32 * 1024 * 1024


class ChunkKeys(NamedTuple):
    """The identities of one stored chunk's events, in its row order: their timestamps
    ``ts``, the microsecond of each (``micros``, int64, never decreasing) and their ``ids``."""

    ts: np.ndarray
    micros: np.ndarray
    ids: pa.Array

    @classmethod
    def of(cls, ts: np.ndarray, ids: pa.Array) -> ChunkKeys:
        """The keys of a chunk of timestamps ``ts`` (sorted) and ids ``ids``."""
        return cls(ts, identity_micros(ts), ids)

    def keys(self, rows: np.ndarray) -> pa.Array:
        """The identity keys (:func:`~theia_frames.server.chunks.sort_keys`) of the events ``rows``."""
        return sort_keys(self.ts[rows], self.ids.take(rows))

    @property
    def nbytes(self) -> int:
        """The memory the keys hold."""
        return int(self.ts.nbytes) + int(self.micros.nbytes) + int(self.ids.nbytes)


class KeyIndex:
    """The keys of stored chunks by chunk number, at most ``limit`` bytes of them (the
    newest chunks: the lowest numbers leave first). Not thread-safe: the store uses it
    under its write lock."""

    def __init__(self, limit: int = KEY_INDEX_BYTES) -> None:
        self.limit = positive_int("limit", limit)
        self._chunks: dict[int, ChunkKeys] = {}
        self.nbytes = 0

    def get(self, seq: int) -> ChunkKeys | None:
        """The keys of chunk ``seq``, or None when they are not held."""
        return self._chunks.get(seq)

    def put(self, seq: int, keys: ChunkKeys) -> None:
        """Hold the keys of chunk ``seq`` (a committed chunk), then let the oldest chunks'
        keys go until at most :attr:`limit` bytes are held (these too, when they are the
        oldest or larger than the limit by themselves)."""
        self.drop([seq])
        self._chunks[seq] = keys
        self.nbytes += keys.nbytes
        if self.nbytes > self.limit:
            for old in sorted(self._chunks):
                self.drop([old])
                if self.nbytes <= self.limit:
                    break

    def drop(self, seqs: Iterable[int]) -> None:
        """Forget the keys of the chunks ``seqs`` (merged away)."""
        for seq in seqs:
            keys = self._chunks.pop(seq, None)
            if keys is not None:
                self.nbytes -= keys.nbytes

    def clear(self) -> None:
        """Forget every chunk's keys."""
        self._chunks.clear()
        self.nbytes = 0

    def seqs(self) -> list[int]:
        """The numbers of the chunks whose keys are held."""
        return list(self._chunks)

    def __len__(self) -> int:
        return len(self._chunks)
