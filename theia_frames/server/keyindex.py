"""The identity keys of an event store's newest chunks, kept in memory, so that the
duplicate check of a commit compares keys without decompressing stored chunks.

A chunk's keys (:class:`ChunkKeys`) are the microseconds of its events' timestamps
(:func:`~theia_frames.server.chunks.identity_micros`, in the chunk's row order, which is
time order) and their identity keys (:func:`~theia_frames.server.chunks.sort_keys`).
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
#: ten characters: 8 bytes of microseconds, 8 + 10 bytes of key and 4 of offset each).
KEY_INDEX_BYTES = 32 * 1024 * 1024


class ChunkKeys(NamedTuple):
    """The identities of one stored chunk's events, in its row order: ``micros``, the
    microsecond of each timestamp (int64, never decreasing), and ``keys``, each event's
    identity key (:func:`~theia_frames.server.chunks.sort_keys`)."""

    micros: np.ndarray
    keys: pa.Array

    @classmethod
    def of(cls, ts: np.ndarray, ids: pa.Array) -> ChunkKeys:
        """The keys of a chunk of timestamps ``ts`` (sorted) and ids ``ids``."""
        return cls(identity_micros(ts), sort_keys(ts, ids))

    @property
    def nbytes(self) -> int:
        """The memory the keys hold."""
        return int(self.micros.nbytes) + int(self.keys.nbytes)


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
