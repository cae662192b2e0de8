"""How :func:`~theia_frames.frames.logs.read_log` reads a log's lines and matches them, a chunk at a time.

- :func:`line_batches`: a file, a binary stream or lines of text as Arrow arrays of
  lines (cut at their newlines where they lie, trailing whitespace removed);
- :func:`match_lines`: which lines a regex matches, and its named groups as
  columns, with Arrow's RE2 kernels (Python's ``re`` through pandas for a pattern
  RE2 cannot run);
- :func:`json_records` and :func:`logfmt_records`: the same for JSON lines and logfmt;
- :func:`ahead`: a thread that matches the next chunk while the caller makes
  this one's frame (Arrow's kernels release the GIL).

>>> lines = pa.array(["2024-05-01 a: one", "junk"])
>>> matched, groups = match_lines(lines, r"(?P<timestamp>\\S+) (?P<name>\\w+): (?P<content>.*)")
>>> matched.tolist(), groups["name"].to_pylist(), groups["content"].to_pylist()
([True, False], ['a', None], ['one', None])
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..exceptions import UsageError

__all__ = ["line_batches", "match_lines", "json_records", "logfmt_records", "ahead", "LINES_PER_PIECE"]

# Bytes read from a file at a time.
_READ_PIECE = 8 * 1024 * 1024
#: Lines given as text are taken this many at a time.
LINES_PER_PIECE = 200_000


def _pieces(source: Any, on_read: Callable[[int], None]) -> Iterator[bytes | list[str]]:
    """The input in pieces: bytes from a path or a binary file, lists of text from lines."""
    if isinstance(source, str) and "\n" in source:
        raise UsageError("read_log takes a path, a binary file or lines: for text, pass text.splitlines()")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            handle = open(path, "rb")
        except OSError as exc:
            raise UsageError(f"cannot read log {str(path)!r}: {exc.strerror or exc}") from None
        with handle:
            yield from _file_pieces(handle, on_read)
        return
    if isinstance(source, (io.RawIOBase, io.BufferedIOBase)) or hasattr(source, "read1"):
        yield from _file_pieces(source, on_read)
        return
    if isinstance(source, io.TextIOBase):
        source = iter(source)
    if isinstance(source, bytes):
        yield source
        return
    chunk: list[str] = []
    for item in source:
        if isinstance(item, bytes):
            item = item.decode("utf-8", "replace")
        if not isinstance(item, str):
            raise UsageError(f"read_log takes a path, a file or lines of text; got a line of type {type(item).__name__}")
        chunk.extend(item.rstrip("\r\n").split("\n") if "\n" in item.rstrip("\r\n") else [item.rstrip("\r\n")])
        if len(chunk) >= LINES_PER_PIECE:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _file_pieces(handle: Any, on_read: Callable[[int], None]) -> Iterator[bytes]:
    read = getattr(handle, "read1", None) or handle.read
    rest = b""
    while True:
        data = read(_READ_PIECE)
        if not data:
            break
        on_read(len(data))
        cut = data.rfind(b"\n")
        if cut < 0:
            rest += data
            continue
        yield rest + data[: cut + 1]
        rest = data[cut + 1 :]
    if rest:
        yield rest


def _lines_of(piece: bytes | list[str]) -> pa.Array:
    """A piece as an Arrow array of its lines, without their trailing whitespace (line ends included).

    Bytes are cut at their newlines where they lie, without a Python string per
    line; bytes that are not UTF-8 are read as U+FFFD.
    """
    if isinstance(piece, list):
        return pc.utf8_rtrim_whitespace(pa.array(piece, pa.string()))
    data = piece if piece.endswith(b"\n") else piece + b"\n"
    ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
    offsets = np.concatenate([[0], ends + 1]).astype(np.int32)
    lines = pa.Array.from_buffers(pa.string(), len(ends), [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    try:
        lines.validate(full=True)
    except pa.ArrowInvalid:
        text = data.decode("utf-8", "replace")
        return pc.utf8_rtrim_whitespace(pa.array(text[:-1].split("\n"), pa.string()))
    return pc.utf8_rtrim_whitespace(lines)


def line_batches(source: Any, batch_size: int, on_read: Callable[[int], None]) -> Iterator[pa.Array]:
    """The lines of each piece read, at most ``batch_size`` at a time: a stream's lines
    (``tail -f``) go on as soon as they are read."""
    for piece in _pieces(source, on_read):
        lines = _lines_of(piece)
        for start in range(0, len(lines), batch_size):
            yield lines.slice(start, batch_size)


# --------------------------------------------------------------------------- matching


def ahead() -> ThreadPoolExecutor:
    """A thread of its own, to match the next chunk's lines while the caller makes this
    chunk's frame (Arrow's kernels release the GIL); shut it down when done."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="theia-read-log")


# A regex ending in a group that takes the rest of the line: its head, and the group's name.
_TAIL = re.compile(r"(?s)(.+)\(\?P<(\w+)>\.\*\??\)")


def _split_tail(regex: str) -> tuple[str, str] | None:
    """``regex`` as its head and the name of a last group ``(?P<name>.*)``, when it ends so."""
    m = _TAIL.fullmatch(regex)
    if m is None:
        return None
    head = m.group(1)
    try:
        if re.compile(head).groups != re.compile(regex).groups - 1:
            return None
    except re.error:
        return None
    return head, m.group(2)


def _extract_tail(lines: pa.Array, head: str, tail: str) -> tuple[np.ndarray, dict[str, pa.Array]]:
    """:func:`match_lines` for a regex ending in ``(?P<tail>.*)``: the head's groups are extracted
    and the rest of the line cut off where the head ends, which RE2 finds without submatches."""
    starts = f"^(?:{head})"
    # the two kernels release the GIL: the rest of the lines is cut while the groups are extracted
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="theia-read-log-cut") as kernel:
        cutting = kernel.submit(pc.replace_substring_regex, lines, starts, "", max_replacements=1)
        parts = pc.extract_regex(lines, starts)
        rest = cutting.result()
    matched = pc.fill_null(pc.is_valid(parts), False).to_numpy(zero_copy_only=False)
    groups = {}
    for k in range(parts.type.num_fields):
        column = parts.field(k)
        groups[parts.type.field(k).name] = pc.if_else(pc.equal(column, ""), pa.scalar(None, pa.string()), column)
    groups[tail] = pc.if_else(pc.and_(pa.array(matched), pc.not_equal(rest, "")), rest, pa.scalar(None, pa.string()))
    return matched, groups


def match_lines(lines: pa.Array, regex: str) -> tuple[np.ndarray, dict[str, pa.Array]]:
    """Which lines match ``regex`` (anchored at both ends) and its named groups' text, as columns."""
    anchored = f"^(?:{regex})$"
    split = _split_tail(regex)
    try:
        if split is not None:
            return _extract_tail(lines, *split)
        parts = pc.extract_regex(lines, anchored)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        # a pattern RE2 cannot run (a lookaround, a backreference): Python's re, through pandas
        found = pd.Series(lines.to_pandas(), dtype=object).str.extract(anchored)
        matched = found.notna().any(axis=1).to_numpy() if found.shape[1] else np.zeros(len(lines), bool)
        if not found.shape[1]:
            raise UsageError(f"the regex {regex!r} has no named group (?P<name>...)") from None
        groups = {str(k): pa.array(found[k].where(found[k].notna(), None).tolist(), pa.string()) for k in found.columns}
        return matched, groups
    matched = pc.fill_null(pc.is_valid(parts), False).to_numpy(zero_copy_only=False)
    groups = {}
    for k in range(parts.type.num_fields):
        column = parts.field(k)
        groups[parts.type.field(k).name] = pc.if_else(pc.equal(column, ""), pa.scalar(None, pa.string()), column)
    return matched, groups


def json_records(lines: pa.Array) -> tuple[np.ndarray, dict[str, pa.Array], list[str]]:
    """JSON objects, one per line: which lines are objects, and each key's values as text."""

    data = "\n".join(lines.to_pylist()).encode()
    reasons: list[str] = [""] * len(lines)
    try:
        import pyarrow.json as pj

        table = pj.read_json(io.BytesIO(data), parse_options=pj.ParseOptions(newlines_in_values=False))
        if any(pa.types.is_timestamp(f.type) for f in table.schema):
            # read again with times as their text: Arrow's reading drops whether a time had an offset
            schema = pa.schema([pa.field(f.name, pa.string()) if pa.types.is_timestamp(f.type) else f for f in table.schema])
            options = pj.ParseOptions(newlines_in_values=False, explicit_schema=schema)
            table = pj.read_json(io.BytesIO(data), parse_options=options)
        if table.num_rows != len(lines):
            raise pa.ArrowInvalid("rows do not match lines")
        matched = np.ones(len(lines), bool)
        columns = {name: _as_text(table.column(name)) for name in table.column_names}
        return matched, columns, reasons
    except pa.ArrowInvalid:
        pass
    # some line is not an object, or a key's values differ in type: each line on its own
    records: list[dict[str, Any]] = []
    matched = np.zeros(len(lines), bool)
    for i, text in enumerate(lines.to_pylist()):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            reasons[i] = f"not JSON ({exc.msg})"
            records.append({})
            continue
        if not isinstance(value, dict):
            reasons[i] = "not a JSON object"
            records.append({})
            continue
        matched[i] = True
        records.append({k: v if isinstance(v, str) or v is None else json.dumps(v) for k, v in value.items()})
    keys: dict[str, None] = {}
    for r in records:
        keys.update(dict.fromkeys(r))
    columns = {k: pa.array([r.get(k) for r in records], pa.string()) for k in keys}
    return matched, columns, reasons


def _as_text(column: pa.ChunkedArray) -> pa.Array:
    column = column.combine_chunks()
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column.cast(pa.string())
    if pa.types.is_struct(column.type) or pa.types.is_list(column.type):

        return pa.array([None if v is None else json.dumps(v) for v in column.to_pylist()], pa.string())
    return pc.cast(column, pa.string())


_LOGFMT_PAIR = r'(?P<key>[^\s=]+)=(?P<value>"(?:[^"\\]|\\.)*"|[^\s"]*)'


def logfmt_records(lines: pa.Array) -> tuple[np.ndarray, dict[str, pa.Array]]:
    """logfmt lines (``key=value key="quoted value"``): which lines hold a pair, and each key's values."""
    series = pd.Series(lines.to_pandas(), dtype=object)
    pairs = series.str.extractall(_LOGFMT_PAIR)
    matched = np.zeros(len(lines), bool)
    if pairs.empty:
        return matched, {}
    pairs = pairs.reset_index(level=1, drop=True)
    pairs = pairs[~pairs.set_index("key", append=True).index.duplicated()]  # a key twice in a line: the first
    quoted = pairs["value"].str.startswith('"')
    unquoted = pairs["value"].str.slice(1, -1).str.replace(r'\\(.)', r"\1", regex=True)
    pairs["value"] = pairs["value"].where(~quoted, unquoted)
    wide = pairs.set_index("key", append=True)["value"].unstack()
    wide = wide.reindex(range(len(lines)))
    matched[:] = wide.notna().any(axis=1).to_numpy()
    keys = list(dict.fromkeys(pairs["key"]))
    return matched, {str(k): pa.array(wide[k].where(wide[k].notna(), None).tolist(), pa.string()) for k in keys}
