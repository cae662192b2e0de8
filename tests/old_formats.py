"""A store file of the current format taken back to the layout of format 7: every chunk stored
in parts (format 8) joined whole into ``chunks.data``, the parts' table and column dropped.
Tests of older formats start from it, as those formats stored every chunk whole."""

from __future__ import annotations

import sqlite3

from theia_frames.server.chunks import read_stream


def join_parts(db: sqlite3.Connection) -> None:
    """Fold every chunk's parts back into ``chunks.data`` and drop the format 8 layout."""
    for seq, head, parts in db.execute("SELECT seq, data, parts FROM chunks WHERE parts IS NOT NULL").fetchall():
        db.execute("UPDATE chunks SET data = ? WHERE seq = ?", (read_stream(db, seq, head, parts), seq))
    db.execute("DROP TRIGGER chunks_columns")
    db.execute("DROP TABLE chunk_columns")
    db.execute("ALTER TABLE chunks DROP COLUMN parts")
