"""Filters as Arrow compute kernels: a filter's patterns matched against whole columns
with Arrow's RE2 (:class:`Kernel`), a ``re`` pattern rewritten for RE2 only where both
engines read it alike, the rest matched row by row; tags matched as lists (or in their
comma text); repeated values matched once. :meth:`EventFilter.mask_batch <theia_frames.filter.EventFilter.mask_batch>` is the entry point.
"""

from __future__ import annotations

import datetime as dt  # noqa: F401  (used by the doctests)
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "Kernel",
    "contains",
    "is_literal",
    "distinct_values",
    "dictionary_indices",
    "mask_tags",
]


# --------------------------------------------------------------------------- matching with Arrow kernels
#
# Arrow's regex kernels run RE2 over UTF-8. An RE2-engine pattern means there
# exactly what it means to the ``re2`` module (the same engine, the same default
# options); a full match is the pattern between ``\A(?:`` and ``)\z``. A pattern
# of Python's ``re`` is rewritten for RE2 only when it uses a subset whose meaning
# both engines share on ASCII text (:func:`_re_as_re2`); rows holding other text
# are then matched by ``re`` itself, and a pattern outside the subset is matched
# by ``re`` on every row it must decide. A literal pattern (no regex syntax) is
# compared as text in either engine.


_REGEX_SYNTAX = frozenset(".^$*+?{}[]\\|()")


def is_literal(pattern: str) -> bool:
    """Whether ``pattern`` fully matches exactly the text it is (no regex syntax in it)."""
    return not _REGEX_SYNTAX.intersection(pattern)


_FLAG_LETTERS = frozenset("ims")


_ESCAPES_ANYWHERE = frozenset("dDwWntrfv")  # same meaning in re and RE2 on ASCII text


_ESCAPES_OUTSIDE = frozenset("bA")  # not \B: re's never matches the empty text, RE2's does


_PUNCTUATION = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


_HEX = frozenset("0123456789abcdefABCDEF")


# what Python's ``re`` reads as \s in ASCII text (RE2's \s leaves out \v and \x1c-\x1f)
_SPACE = r"\t\n\v\f\r\x1c-\x1f "


_REPEAT = re.compile(r"\{(\d+)(,(\d*))?\}")


_GROUP_NAME = re.compile(r"\?P<[A-Za-z_][A-Za-z0-9_]*>")


_GROUP_FLAGS = re.compile(r"\?([ims]*)(:|\))")


def _escape(pattern: str, at: int, in_class: bool) -> tuple[str, int] | None:
    """The RE2 form of the _escape at ``pattern[at]`` (a backslash) and where it ends."""
    if at + 1 >= len(pattern):
        return None
    c = pattern[at + 1]
    if c in _ESCAPES_ANYWHERE or c in _PUNCTUATION or (not in_class and c in _ESCAPES_OUTSIDE):
        return pattern[at : at + 2], at + 2
    if c == "s":
        return (_SPACE if in_class else f"[{_SPACE}]"), at + 2
    if c == "S" and not in_class:
        return f"[^{_SPACE}]", at + 2
    if c == "x" and len(pattern) >= at + 4 and _HEX.issuperset(pattern[at + 2 : at + 4]):
        return pattern[at : at + 4], at + 4
    return None


def _re_as_re2(pattern: str) -> str | None:
    """``pattern`` (Python ``re`` syntax) written for RE2 with the same meaning on ASCII
    text, or None when it uses anything outside the subset both read alike.

    The subset: ASCII literals, ``.``, classes (no nested ``[``), ``\\d \\w \\s``
    and their negations, ``\\b \\A``, escaped punctuation, ``\\xhh``, ``^``,
    ``|``, groups (plain, ``(?:``, named, ``(?ims)`` and ``(?ims:``), and the
    repeats ``* + ? {m} {m,} {m,n}``, greedy or lazy. Left out, among others:
    ``$`` (re also matches before a final newline), possessive repeats,
    lookaround, backreferences, ``{,n}``, verbose mode and non-ASCII patterns.
    """
    if not pattern.isascii():
        return None
    out: list[str] = []
    at, n = 0, len(pattern)
    while at < n:
        c = pattern[at]
        if c == "\\":
            escaped = _escape(pattern, at, False)
            if escaped is None:
                return None
            text, at = escaped
            out.append(text)
        elif c == "[":
            end = at + 1
            part = ["["]
            if end < n and pattern[end] == "^":
                part.append("^")
                end += 1
            if end < n and pattern[end] == "]":
                part.append("\\]")
                end += 1
            while end < n and pattern[end] != "]":
                ch = pattern[end]
                if ch == "[":
                    return None
                if ch == "\\":
                    escaped = _escape(pattern, end, True)
                    if escaped is None:
                        return None
                    text, end = escaped
                    part.append(text)
                else:
                    part.append(ch)
                    end += 1
            if end >= n:
                return None
            part.append("]")
            out.append("".join(part))
            at = end + 1
        elif c == "(":
            if pattern.startswith("(?", at):
                group = _GROUP_NAME.match(pattern, at + 1) or _GROUP_FLAGS.match(pattern, at + 1)
                if group is None:
                    return None
                out.append(pattern[at : group.end()])
                at = group.end()
            else:
                out.append(c)
                at += 1
        elif c in "*+?":
            out.append(c)
            at += 1
            if at < n and pattern[at] == "?":
                out.append("?")
                at += 1
            if at < n and pattern[at] in "*+?{":
                return None  # possessive, or a repeat of a repeat
        elif c == "{":
            repeat = _REPEAT.match(pattern, at)
            if repeat is None:
                return None
            out.append(repeat.group())
            at = repeat.end()
            if at < n and pattern[at] == "?":
                out.append("?")
                at += 1
            if at < n and pattern[at] in "*+?{":
                return None
        elif c == "$":
            return None
        else:
            out.append(c)
            at += 1
    return "".join(out)


def _kernel_works(regex: str) -> bool:
    """Whether Arrow's RE2 takes ``regex`` (it refuses some that ``re`` takes: large repeats)."""
    try:
        pc.match_substring_regex(pa.array([""], pa.string()), regex)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


class Kernel:
    """One pattern of a filter, matched against a whole Arrow string array at once."""

    __slots__ = ("compiled", "full", "literal", "regex", "ascii_only")

    def __init__(self, source: str, compiled: Any, engine: str, full: bool) -> None:
        self.compiled = compiled
        self.full = full
        self.literal: str | None = source if is_literal(source) else None
        self.regex: str | None = None
        self.ascii_only = False
        if self.literal is None:
            regex = source if engine == "re2" else _re_as_re2(source)
            if regex is not None:
                regex = f"\\A(?:{regex})\\z" if full else regex
                if _kernel_works(regex):
                    self.regex = regex
                    self.ascii_only = engine != "re2"

    def mask(self, values: pa.Array, alive: np.ndarray | None = None) -> np.ndarray:
        """One bool per value: whether it matches. Rows off in ``alive`` may come out
        either way (the per-row path skips them)."""
        if self.literal is not None:
            if not self.full:
                return contains(values, self.literal)
            return _bools(pc.equal(values, self.literal))
        if self.regex is None:
            return self._by_row(values, alive)
        hit = _bools(pc.match_substring_regex(values, self.regex))
        if self.ascii_only:
            other = ~_bools(pc.string_is_ascii(values))
            if alive is not None:
                other &= alive
            if other.any():
                hit[other] = self._by_row(values, other)[other]
        return hit

    def _by_row(self, values: pa.Array, alive: np.ndarray | None) -> np.ndarray:
        test = self.compiled.fullmatch if self.full else self.compiled.search
        if alive is None:
            return np.fromiter((test(v) is not None for v in values.to_pylist()), dtype=bool, count=len(values))
        hit = np.zeros(len(values), dtype=bool)
        rows = np.flatnonzero(alive)
        if len(rows):
            texts = values.take(pa.array(rows)).to_pylist()
            hit[rows] = np.fromiter((test(v) is not None for v in texts), dtype=bool, count=len(rows))
        return hit


# Values repeat (a few sources, a few tag sets) when a sample of this many rows
# holds at most an eighth as many distinct values: then each distinct value is
# matched once and the rows take their value's answer.
_SAMPLE = 4096


def distinct_values(column: Any) -> Any:
    """``column`` dictionary-encoded when its values repeat (see :data:`_SAMPLE`), else None;
    a dictionary column (the event schema's ``source``) is itself."""
    if pa.types.is_dictionary(column.type):
        return column if not column.null_count else None
    if len(column) <= _SAMPLE or column.null_count or not (
        pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
    ):
        return None
    if len(pc.unique(column.slice(0, _SAMPLE))) * 8 > _SAMPLE:
        return None
    encoded = pc.dictionary_encode(column)
    return encoded if len(encoded.dictionary) * 8 <= len(column) else None


def dictionary_indices(encoded: Any) -> np.ndarray:
    """The dictionary indices of a dictionary array without missing values, as numpy."""
    return np.asarray(encoded.indices.to_numpy(zero_copy_only=False))


def mask_tags(kernels: Sequence[Kernel], column: Any, keep: np.ndarray) -> np.ndarray:
    """``keep`` and-ed with, for each tag pattern, whether some tag of the row fully matches it.

    A literal pattern on comma text is looked for in the text itself, with no
    split: a substring search finds the candidate rows, and the literal
    between a comma or the text's start and a comma or its end is a tag
    equal to it. The other patterns are matched against the split tags of
    the rows still in question.
    """
    listed = pa.types.is_list(column.type) or pa.types.is_large_list(column.type)
    rest = []
    for kernel in kernels:
        literal = kernel.literal
        if listed or not literal:
            rest.append(kernel)
            continue
        if "," in literal:
            return np.zeros(len(keep), dtype=bool)  # no tag holds a comma
        keep = keep & _bools(pc.match_substring(column, literal))
        rows = np.flatnonzero(keep)
        if not len(rows):
            return keep
        exact = f"(?:^|,){literal}(?:,|$)"  # a literal holds no regex syntax
        if len(rows) == len(keep):
            keep = _bools(pc.match_substring_regex(column, exact))
        else:
            keep[rows] = _bools(pc.match_substring_regex(column.take(pa.array(rows)), exact))
    if not rest or not keep.any():
        return keep
    rows = np.flatnonzero(keep)
    sparse = len(rows) * 4 < len(keep)
    values, offsets = _tag_values(column.take(pa.array(rows)) if sparse else column)
    counts = np.diff(offsets)
    alive = np.ones(len(rows), dtype=bool) if sparse else keep
    # tags repeat: a pattern that is not a literal is matched once per distinct tag
    distinct = distinct_values(values) if any(k.literal is None for k in rest) else None
    for kernel in rest:
        # each tag: is its row still in question (None: every row is)
        live = None if alive.all() else np.repeat(alive, counts)
        if distinct is not None and kernel.literal is None:
            hit = kernel.mask(distinct.dictionary)[dictionary_indices(distinct)]
        else:
            hit = kernel.mask(values, live)
        if live is not None:
            hit &= live
        # a row has a matching tag when the hits counted up to its end exceed those up to its start
        seen = np.zeros(len(hit) + 1, dtype=np.int64)
        np.cumsum(hit, out=seen[1:])
        alive = alive & (seen[offsets[1:]] > seen[offsets[:-1]])
        if not alive.any():
            break
    if sparse:
        keep = keep.copy()
        keep[rows] = alive
        return keep
    return alive


def _tag_values(column: Any) -> tuple[Any, np.ndarray]:
    """Every tag of a tags column (comma text, or lists) and the offsets of each row's
    tags among them (numpy, from 0: row ``i`` holds ``values[offsets[i]:offsets[i + 1]]``).

    The empty text is no tags, as :func:`~theia_frames.protocol.codec.split_tags` reads it.
    """
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        lists = column
    else:
        lists = pc.split_pattern(pc.if_else(pc.equal(pc.binary_length(column), 0), None, column), ",")
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    offsets = np.asarray(lists.offsets.to_numpy(zero_copy_only=False), dtype=np.int64)
    first = int(offsets[0]) if len(offsets) else 0
    values = lists.values.slice(first, int(offsets[-1]) - first if len(offsets) else 0)
    return values, offsets - first


# A literal is searched for in a string column's bytes at once (Python's ``re``, which skips
# to the literal's first byte) while it occurs in at most one row in this many; beyond
# that, Arrow's kernel, which tests every row, is faster.
_DENSE = 16


def contains(values: Any, literal: str) -> np.ndarray:
    """One bool per string of ``values`` (an Arrow string array; a missing one: False):
    whether it holds ``literal``, as ``pyarrow.compute.match_substring`` tells.

    Where the literal is rare, its occurrences are found in the column's UTF-8 bytes in one
    search (Arrow's ``split_pattern`` over the bytes as one value, the interpreter let go
    meanwhile; a UTF-8 literal occurs only at character boundaries) and each is given to the
    row that holds it whole; a row right after an occurrence that crosses into it is tested
    on its own (the search resumes after an occurrence, so one starting inside that one could
    be passed over). Once occurrences pass one row in :data:`_DENSE`, the search stops and
    Arrow's kernel decides.

    >>> contains(pa.array(["an error", "ok", None, "errors", "er", "ror"]), "error").tolist()
    [True, False, False, True, False, False]
    >>> contains(pa.array(["xa", "ab"]), "aa").tolist()  # across two rows is in neither
    [False, False]
    """
    needle = literal.encode("utf-8")
    kind = values.type
    if not needle or not (pa.types.is_string(kind) or pa.types.is_large_string(kind)) or not len(values):
        return _bools(pc.fill_null(pc.match_substring(values, literal), False))
    width = np.int64 if pa.types.is_large_string(kind) else np.int32
    offsets = np.frombuffer(values.buffers()[1], dtype=width)[values.offset : values.offset + len(values) + 1].astype(np.int64)
    first, last = int(offsets[0]), int(offsets[-1])
    data = values.buffers()[2]
    if data is None or last == first:
        return np.zeros(len(values), dtype=bool)
    text = pa.Array.from_buffers(
        pa.large_binary(), 1, [None, pa.py_buffer(np.array([0, last - first], dtype=np.int64)), data.slice(first, last - first)]
    )
    limit = len(values) // _DENSE + 1
    pieces = pc.split_pattern(text, pattern=needle, max_splits=limit + 1).values
    if len(pieces) > limit + 1:
        return _bools(pc.fill_null(pc.match_substring(values, literal), False))
    # occurrence k starts where piece k ends, in the text less the k occurrences before it
    ends_of_pieces = np.frombuffer(pieces.buffers()[1], dtype=np.int64)[pieces.offset + 1 : pieces.offset + len(pieces)]
    starts = ends_of_pieces + np.arange(len(ends_of_pieces), dtype=np.int64) * len(needle)
    ends = offsets - first
    rows = np.searchsorted(ends, starts, side="right") - 1
    whole = starts + len(needle) <= ends[rows + 1]
    hit = np.zeros(len(values), dtype=bool)
    hit[rows[whole]] = True
    # rows an occurrence crossed into: tested alone
    crossed = rows[~whole]
    if len(crossed):
        last_rows = np.searchsorted(ends, starts[~whole] + len(needle) - 1, side="right") - 1
        suspects = np.unique(np.concatenate([np.arange(a + 1, b + 1) for a, b in zip(crossed.tolist(), last_rows.tolist())]))
        suspects = suspects[suspects < len(values)]
        if len(suspects):
            hit[suspects] = _bools(pc.fill_null(pc.match_substring(values.take(pa.array(suspects)), literal), False))
    if values.null_count:
        hit &= _bools(values.is_valid())
    return hit


def _bools(array: Any) -> np.ndarray:
    """A boolean Arrow array (no missing values) as a writable numpy array."""
    return np.array(array.to_numpy(zero_copy_only=False), dtype=bool)
