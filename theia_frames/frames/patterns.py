"""Message patterns: which kinds of message a log holds, and which are new, rare or spiking.

:func:`patterns` gives every line the template of its message, with the
variable parts as ``<*>``, and a stable ``pattern_id`` (a hash of the
template: the same template has the same id in every run, frame and
partition)::

    >>> lines = ["Accepted password for root from 10.0.0.5 port 22 ssh2",
    ...          "Accepted password for alice from 10.0.0.7 port 4122 ssh2",
    ...          "Invalid user admin from 10.0.0.9",
    ...          "Accepted password for bob from 10.0.0.8 port 51220 ssh2"]
    >>> df = pd.DataFrame({"timestamp": pd.to_datetime([1, 2, 3, 4], unit="s", utc=True), "content": lines})
    >>> patterns(df)["pattern"].tolist()
    ['Accepted password for <*> from <*> port <*> ssh2', 'Accepted password for <*> from <*> port <*> ssh2',
     'Invalid user admin from <*>', 'Accepted password for <*> from <*> port <*> ssh2']

How (the ``patterns`` extra: ``pip install 'theia-frames[patterns]'``, which
installs drain3):

1. The obviously variable parts are masked with Arrow's RE2 kernels
   (:mod:`theia_frames.frames.masking`): addresses, numbers, ids, paths,
   quoted text, quantities. The generic masks treat every digit alike, so
   they run once per group of lines that are equal once every digit is ``0``
   (a NumPy pass over the column's bytes), not once per line. Real logs
   repeat heavily once masked.
2. Only the **distinct masked lines** ("shapes") are mined, with drain3's Drain
   (``sim_th=0.6``, ``depth=5``; ``=``, ``:``, ``,`` and brackets split tokens),
   most frequent shape first, ties in text order: the templates do not depend
   on the order of the rows, and the cost follows the number of shapes, not
   of lines. Each shape keeps the cluster Drain put it in; the template of a
   line is its cluster's template once every shape has been seen.
3. Templates that differ only in how many variables stand side by side
   (``bytes <*> received`` and ``bytes <*> <*> received``) are one pattern.

One configuration serves every log (BENCHMARKS.md has its grouping accuracy on
eight real ones); a :class:`PatternMiner` takes your own masks and Drain's
parameters, and keeps what it learnt, to give another frame the same
templates (``learn=False``: a line that fits no known template gets no
pattern, and is counted in ``attrs["theia_patterns"]["unmatched"]``).

:func:`pattern_counts` counts lines per pattern (per time bucket, per source),
:func:`compare_patterns` compares a window with a baseline (new, gone,
spiking, dropping, steady; most surprising first) and :func:`rare_patterns`
lists the patterns seen only a few times. Each is a plain function that
returns a new frame and never changes its input; each is also
``df.theia.<name>(...)``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..checks import positive_int, positive_number
from ..exceptions import MissingDependencyError, UsageError
from ..timeparse import to_epoch
from .analysis import bucket, event_times
from .masking import DEFAULT_MASKS, TOKEN_SEPARATORS, VARIABLE, Mask, check_masks, mask_values

__all__ = [
    "PatternMiner",
    "patterns",
    "pattern_counts",
    "compare_patterns",
    "rare_patterns",
    "pattern_id",
]

_SEPARATORS = re.compile("[" + TOKEN_SEPARATORS + "]")
_PIECES = re.compile(r"([\s" + TOKEN_SEPARATORS + "]+)")
_RUNS = re.compile(r"<\*>(?:\s+<\*>)+")
_STATUSES = ("new", "spiking", "dropping", "gone", "steady")


def _drain3() -> Any:
    try:
        from drain3.drain import Drain
    except ImportError as exc:
        raise MissingDependencyError("drain3", "patterns", "patterns()") from exc
    return Drain


def pattern_id(template: str) -> str:
    """The id of a template: 16 hex digits of its BLAKE2b hash, after its runs of
    variables are made one (``a <*> <*> b`` and ``a <*> b`` are one pattern).

    >>> pattern_id("Invalid user <*> from <*>")
    'd74faaa452c3f618'
    >>> pattern_id("Invalid user <*> <*> from <*>") == pattern_id("Invalid user <*> from <*>")
    True
    """
    key = _RUNS.sub(VARIABLE, " ".join(_SEPARATORS.sub(" ", template).split()))
    return hashlib.blake2b(key.encode("utf-8"), digest_size=8).hexdigest()


def _render(example: str, tokens: Sequence[str]) -> str:
    """The template as its first line wrote it: the line's own spacing and punctuation, with
    ``<*>`` where the template has one; runs of variables made one."""
    parts = _PIECES.split(example.strip())
    words = [i for i in range(0, len(parts), 2) if parts[i]]
    if len(words) != len(tokens):  # cannot happen for a shape Drain saw; kept exact anyway
        return _RUNS.sub(VARIABLE, " ".join(tokens))
    for i, token in zip(words, tokens):
        if token == VARIABLE:
            parts[i] = VARIABLE
    return _RUNS.sub(VARIABLE, "".join(parts))


def _zero_digits(texts: pa.Array) -> pa.Array:
    """``texts`` with every ASCII digit made ``0``, on the bytes at once (a digit byte is never
    part of a longer UTF-8 character, and the lengths do not change)."""
    if not len(texts):
        return texts
    validity, offsets, data = texts.buffers()
    first = texts.offset
    ends = np.frombuffer(offsets, dtype=np.int32, count=first + len(texts) + 1, offset=0)
    start, stop = int(ends[first]), int(ends[-1])
    raw = np.frombuffer(data, dtype=np.uint8, count=stop) if data is not None else np.zeros(0, np.uint8)
    zeroed = raw.copy()
    zeroed[start:stop][(raw[start:stop] >= 0x31) & (raw[start:stop] <= 0x39)] = 0x30
    return pa.Array.from_buffers(pa.string(), len(texts), [validity, offsets, pa.py_buffer(zeroed)], texts.null_count, first)


def _indices(encoded: pa.DictionaryArray) -> np.ndarray:
    return np.asarray(pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False), dtype=np.int64)


class PatternMiner:
    """Masks, a drain3 miner and what it learnt: gives lines their patterns, and gives other
    frames the same ones.

    ``masks`` are your own ``(pattern, replacement)`` pairs (RE2), run before the
    generic :data:`~theia_frames.frames.masking.DEFAULT_MASKS` (or instead of
    them, with ``default_masks=False``). ``sim_th``, ``depth`` and
    ``max_children`` are drain3's (the share of a template's words a line must
    share to join it; the depth of its prefix tree; the branches per node).

    >>> miner = PatternMiner(masks=[(r"user \\w+", "user <*>")])
    >>> df = pd.DataFrame({"content": ["Invalid user admin from 10.0.0.9", "Invalid user guest from 10.0.0.2"]})
    >>> miner.patterns(df)["pattern"].tolist()
    ['Invalid user <*> from <*>', 'Invalid user <*> from <*>']
    >>> other = pd.DataFrame({"content": ["Invalid user root from 10.1.1.1", "Connection closed"]})
    >>> miner.patterns(other, learn=False)["pattern"].tolist()
    ['Invalid user <*> from <*>', nan]

    A miner pickles (Dask ships it to its workers). Memory: one entry per
    distinct masked line and per cluster, never per line.
    """

    def __init__(
        self,
        masks: Sequence[tuple[str, str]] | Sequence[tuple[str, str, str]] | None = None,
        *,
        default_masks: bool = True,
        sim_th: float = 0.6,
        depth: int = 5,
        max_children: int = 100,
    ) -> None:
        if not isinstance(sim_th, (int, float)) or isinstance(sim_th, bool) or not 0 <= sim_th <= 1:
            raise UsageError(f"sim_th must be a number from 0 to 1, got {sim_th!r}")
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 3:
            raise UsageError(f"depth must be an integer of at least 3, got {depth!r}")
        max_children = positive_int("max_children", max_children)
        self._own_masks = check_masks(masks)
        self._default_masks = bool(default_masks)
        self.masks: tuple[Mask, ...] = self._own_masks + (DEFAULT_MASKS if default_masks else ())
        self.sim_th = float(sim_th)
        self.depth = depth
        self.max_children = max_children
        self._drain: Any = None
        self._cluster_of: dict[str, int] = {}  # shape -> the cluster Drain put it in
        self._example: dict[int, str] = {}  # cluster -> its first shape, as written (for display)

    def __repr__(self) -> str:
        return (
            f"PatternMiner(sim_th={self.sim_th}, depth={self.depth}, masks={len(self.masks)}, "
            f"shapes={len(self._cluster_of)}, clusters={len(self._example)})"
        )

    def _miner(self) -> Any:
        if self._drain is None:
            Drain = _drain3()
            self._drain = Drain(
                sim_th=self.sim_th, depth=self.depth, max_children=self.max_children, parametrize_numeric_tokens=True
            )
        return self._drain

    # ------------------------------------------------------------------ columns

    def mask(self, values: Any) -> pa.Array | pa.ChunkedArray:
        """The lines with this miner's masks applied (Arrow strings in, Arrow strings out)."""
        return mask_values(values, self.masks)

    def shapes(self, values: pd.Series) -> tuple[list[str], np.ndarray]:
        """The distinct masked lines of ``values`` and, per line, the index of its shape
        (-1 for a missing line)."""
        if isinstance(values.dtype, pd.CategoricalDtype):
            column = pa.array(values.cat.categories.astype(str).tolist(), pa.string())
            codes = values.cat.codes.to_numpy().astype(np.int64)
        else:
            try:
                column = pa.array(values.array if isinstance(values.dtype, pd.StringDtype) else values, from_pandas=True)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise UsageError(f"patterns need text lines; the column holds {values.dtype}: {exc}") from exc
            if isinstance(column, pa.ChunkedArray):
                column = column.combine_chunks()
            if pa.types.is_large_string(column.type) or pa.types.is_string_view(column.type):
                column = column.cast(pa.string())
            if not pa.types.is_string(column.type):
                if len(column) and column.null_count < len(column):
                    raise UsageError(f"patterns need text lines; the column holds {values.dtype}")
                column = column.cast(pa.string())
            codes = np.arange(len(column), dtype=np.int64)
            if column.null_count:
                codes[np.asarray(column.is_null())] = -1
        shapes, shape_of = self._shape_texts(column)
        rows = np.full(len(codes), -1, dtype=np.int64)
        valid = codes >= 0
        rows[valid] = shape_of[codes[valid]]
        return shapes, rows

    def _shape_texts(self, texts: pa.Array) -> tuple[list[str], np.ndarray]:
        """The distinct masked forms of ``texts`` and the index of each text's form.

        The generic masks treat every digit alike, so they give a line the shape
        they give it with each digit made ``0``: they run once per distinct such
        line (real logs have few), and their output is that of every line of the
        group unless it kept a digit (``ssh2``), which only the line's own digits
        can write: those lines are masked one distinct line at a time.
        """
        texts = mask_values(texts, self._own_masks)
        if not self._default_masks:
            encoded = pc.dictionary_encode(texts)
            return encoded.dictionary.to_pylist(), _indices(encoded)
        zeroed = pc.dictionary_encode(_zero_digits(texts))
        forms = mask_values(zeroed.dictionary, DEFAULT_MASKS)
        form_of = _indices(zeroed)
        kept_digit = np.asarray(pc.fill_null(pc.match_substring_regex(forms, pattern="[0-9]"), False), dtype=bool)
        if kept_digit.any():
            own = np.flatnonzero(kept_digit[np.maximum(form_of, 0)] & (form_of >= 0))
            own_texts = pc.dictionary_encode(texts.take(pa.array(own)))
            own_forms = mask_values(own_texts.dictionary, DEFAULT_MASKS)
            form_of[own] = len(forms) + _indices(own_texts)
            forms = pa.concat_arrays([forms, own_forms])
            used = np.unique(form_of[form_of >= 0])  # the forms no line has any more are dropped
            forms = forms.take(pa.array(used))
            form_of = np.where(form_of >= 0, np.searchsorted(used, np.maximum(form_of, 0)), -1)
        distinct = pc.dictionary_encode(forms)
        shape_of_form = _indices(distinct)
        shape_of = np.where(form_of >= 0, shape_of_form[np.maximum(form_of, 0)] if len(shape_of_form) else -1, -1)
        return distinct.dictionary.to_pylist(), shape_of

    # ------------------------------------------------------------------ learning

    def learn(self, shapes: Sequence[str], counts: Sequence[int] | np.ndarray | None = None) -> None:
        """Mine the shapes not seen before: the most frequent first, ties in text order, so the
        templates do not depend on the order of the lines."""
        drain = self._miner()
        weights = np.ones(len(shapes), dtype=np.int64) if counts is None else np.asarray(counts, dtype=np.int64)
        order = sorted(range(len(shapes)), key=lambda i: (-int(weights[i]), shapes[i]))
        for i in order:
            shape = shapes[i]
            if shape in self._cluster_of:
                continue
            cluster, _ = drain.add_log_message(_SEPARATORS.sub(" ", shape))
            self._cluster_of[shape] = cluster.cluster_id
            self._example.setdefault(cluster.cluster_id, shape)

    def _catalogue(self) -> dict[int, tuple[str, str]]:
        """Per cluster: (pattern id, pattern text); a merged pattern is written as its oldest cluster's."""
        if self._drain is None:
            return {}
        ids: dict[int, str] = {}
        first_of_id: dict[str, int] = {}
        for cluster in self._drain.clusters:
            key = pattern_id(" ".join(cluster.log_template_tokens))
            ids[cluster.cluster_id] = key
            first_of_id[key] = min(first_of_id.get(key, cluster.cluster_id), cluster.cluster_id)
        out = {}
        for cid, key in ids.items():
            first = first_of_id[key]
            tokens = self._drain.id_to_cluster[first].log_template_tokens
            out[cid] = (key, _render(self._example.get(first, " ".join(tokens)), tokens))
        return out

    def assign(self, shapes: Sequence[str]) -> list[tuple[str, str] | None]:
        """(pattern id, pattern) per shape: a shape learnt keeps its cluster; another one gets the
        template it fits exactly (drain3's ``match``), or None."""
        catalogue = self._catalogue()
        out: list[tuple[str, str] | None] = []
        for shape in shapes:
            cid = self._cluster_of.get(shape)
            if cid is None and self._drain is not None:
                cluster = self._drain.match(_SEPARATORS.sub(" ", shape), full_search_strategy="fallback")
                cid = None if cluster is None else cluster.cluster_id
            out.append(None if cid is None else catalogue[cid])
        return out

    def templates(self) -> pd.DataFrame:
        """The patterns learnt so far: ``pattern_id``, ``pattern`` and how many distinct masked
        lines each holds, the largest first."""
        catalogue = self._catalogue()
        shapes = pd.Series(list(self._cluster_of.values()), dtype=np.int64).map(lambda c: catalogue[c][0])
        sizes = shapes.value_counts()
        text = {key: value for key, value in catalogue.values()}
        out = pd.DataFrame({"pattern_id": sizes.index.astype(str), "shapes": sizes.to_numpy(dtype=np.int64)})
        out.insert(1, "pattern", out["pattern_id"].map(text))
        return out.sort_values(["shapes", "pattern"], ascending=[False, True], ignore_index=True)

    # ------------------------------------------------------------------ frames

    def patterns(self, df: pd.DataFrame, column: str = "content", *, learn: bool = True) -> pd.DataFrame:
        """``df`` with a ``pattern`` and a ``pattern_id`` column (categories), as a new frame;
        ``learn=False`` only applies what this miner knows. See :func:`patterns`."""
        if not isinstance(df, pd.DataFrame):
            raise UsageError(f"patterns takes a DataFrame, got {type(df).__name__}")
        if column not in df.columns:
            raise UsageError(f"patterns needs the column {column!r}; the frame has {list(df.columns)}")
        shapes, rows = self.shapes(df[column])
        if learn:
            self.learn(shapes, np.bincount(rows[rows >= 0], minlength=len(shapes)))
        elif self._drain is None:
            self._miner()
        assigned = self.assign(shapes)
        ids = sorted({a[0] for a in assigned if a is not None})
        text_of = {a[0]: a[1] for a in assigned if a is not None}
        position = {key: i for i, key in enumerate(ids)}
        code_of_shape = np.array([-1 if a is None else position[a[0]] for a in assigned] + [-1], dtype=np.int64)
        codes = code_of_shape[rows]  # rows of -1 (missing lines) take the sentinel at the end
        out = df.copy(deep=False)
        out["pattern"] = pd.Categorical.from_codes(codes, categories=pd.Index([text_of[k] for k in ids], dtype=object))
        out["pattern_id"] = pd.Categorical.from_codes(codes, categories=pd.Index(ids, dtype=object))
        missing = int((rows < 0).sum())
        out.attrs = {
            **df.attrs,
            "theia_patterns": {
                "lines": len(df),
                "shapes": len(shapes),
                "patterns": len(ids),
                "missing": missing,
                "unmatched": int((codes < 0).sum()) - missing,
            },
        }
        return out


def _miner_for(miner: PatternMiner | None, options: dict[str, Any]) -> PatternMiner:
    given = {k: v for k, v in options.items() if v is not None}
    if miner is None:
        return PatternMiner(**given)
    if not isinstance(miner, PatternMiner):
        raise UsageError(f"miner must be a PatternMiner, got {type(miner).__name__}")
    if given:
        raise UsageError(f"{sorted(given)} belong to the miner: pass them to PatternMiner(...), not with miner=")
    return miner


def patterns(
    df: pd.DataFrame,
    column: str = "content",
    *,
    miner: PatternMiner | None = None,
    learn: bool = True,
    masks: Sequence[tuple[str, str]] | None = None,
    sim_th: float | None = None,
    depth: int | None = None,
) -> pd.DataFrame:
    """``df`` with the template of each line's message (``pattern``) and its stable id
    (``pattern_id``), both categories, as a new frame; ``df`` is not changed.

    ``column`` holds the messages: give it the message without the line's
    header (time, host, level, component), as :func:`~theia_frames.frames.logs.read_log`
    puts it in ``content``; words of a header that repeat on every line count
    as shared words and make different messages look alike. ``masks`` adds your own ``(RE2 pattern,
    replacement)`` pairs before the generic ones; ``sim_th`` and ``depth`` are
    drain3's (defaults 0.6 and 5). ``miner=`` takes a :class:`PatternMiner`
    instead, which keeps what it learnt for the next frame (``learn=False``
    applies its templates without learning new ones). A missing line has no
    pattern; ``attrs["theia_patterns"]`` says how many lines, distinct masked
    lines and patterns there were, and how many lines were missing or fitted
    no template.

    >>> df = pd.DataFrame({"content": ["Accepted password for root from 10.0.0.5 port 22 ssh2",
    ...                                "Accepted password for alice from 10.0.0.7 port 4122 ssh2",
    ...                                "Connection closed by 10.0.0.9 [preauth]"]})
    >>> out = patterns(df)
    >>> out["pattern"].tolist()
    ['Accepted password for <*> from <*> port <*> ssh2', 'Accepted password for <*> from <*> port <*> ssh2', 'Connection closed by <*> [preauth]']
    """
    chosen = _miner_for(miner, {"masks": masks, "sim_th": sim_th, "depth": depth})
    return chosen.patterns(df, column, learn=learn)


# --------------------------------------------------------------------------- counting


def _patterned(df: Any, what: str, column: str, miner: PatternMiner | None) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise UsageError(f"{what} takes a DataFrame, got {type(df).__name__}")
    if "pattern_id" in df.columns and "pattern" in df.columns:
        return df
    return patterns(df, column, miner=miner)


def _summary(df: pd.DataFrame, times: pd.DatetimeIndex, column: str, keys: list[str]) -> pd.DataFrame:
    """Per pattern (and per key): count, first and last time, the first line."""
    frame = pd.DataFrame(
        {
            **{k: df[k].to_numpy() for k in keys},
            "pattern_id": df["pattern_id"].astype(object).to_numpy(),
            "pattern": df["pattern"].astype(object).to_numpy(),
            "time": times,
            "sample": df[column].astype(object).to_numpy() if column in df.columns else None,
        }
    )
    frame = frame[frame["pattern_id"].notna()]
    grouped = frame.groupby([*keys, "pattern_id"], sort=False, dropna=False)
    out = grouped.agg(
        pattern=("pattern", "first"),
        count=("time", "size"),
        first_seen=("time", "min"),
        last_seen=("time", "max"),
        sample=("sample", "first"),
    ).reset_index()
    out["count"] = out["count"].astype(np.int64)
    return out


def pattern_counts(
    df: pd.DataFrame,
    every: Any = None,
    by: str | None = None,
    *,
    column: str = "content",
    miner: PatternMiner | None = None,
) -> pd.DataFrame:
    """Lines per pattern: ``pattern_id``, ``pattern``, ``count``, ``share`` (of the lines with a
    pattern), ``first_seen``, ``last_seen`` and a ``sample`` line, the largest first.

    ``by="source"`` (or any column) counts per value of it too; ``every="1min"``
    (a duration or pandas frequency, as :func:`~theia_frames.frames.analysis.bucket`
    takes) per time bucket, one row per bucket and pattern that has lines (the
    wide table with zeros, one column per pattern, is
    ``bucket(df, every, by="pattern")``). A frame without patterns gets them
    first (:func:`patterns`, with ``miner`` if given).

    >>> df = pd.DataFrame({"timestamp": pd.to_datetime([0, 30, 70], unit="s", utc=True),
    ...                    "content": ["disk 91% full", "disk 97% full", "fan failed"]})
    >>> pattern_counts(df)[["pattern", "count"]]
          pattern  count
    0  disk <*> full      2
    1   fan failed      1
    """
    df = _patterned(df, "pattern_counts", column, miner)
    times = event_times(df, "pattern_counts")
    keys: list[str] = []
    if by is not None:
        if by in ("pattern", "pattern_id", "bucket"):
            raise UsageError(f"pattern_counts(by={by!r}): the counts are per pattern already; by= names another column")
        if by not in df.columns:
            raise UsageError(f"pattern_counts(by={by!r}) needs that column; the frame has {list(df.columns)}")
        keys.append(by)
    if every is not None:
        edges = pd.DatetimeIndex(bucket(pd.DataFrame({"timestamp": times}), every).index)
        slot = np.searchsorted(np.asarray(edges.as_unit("ns").asi8), np.asarray(times.as_unit("ns").asi8), side="right") - 1
        df = df.assign(bucket=pd.Series(edges[slot] if len(edges) else times, index=df.index))
        keys.insert(0, "bucket")
    out = _summary(df, times, column, keys)
    if every is not None:
        out = out.sort_values([*keys, "count", "pattern"], ascending=[True] * len(keys) + [False, True], ignore_index=True)
    else:
        total = out.groupby(keys)["count"].transform("sum") if keys else out["count"].sum()
        out.insert(list(out.columns).index("count") + 1, "share", out["count"] / total if len(out) else 0.0)
        out = out.sort_values([*keys, "count", "pattern"], ascending=[True] * len(keys) + [False, True], ignore_index=True)
    return out


def rare_patterns(
    df: pd.DataFrame, max_count: int = 3, *, column: str = "content", miner: PatternMiner | None = None
) -> pd.DataFrame:
    """The patterns seen at most ``max_count`` times, the rarest first (then the earliest), with
    the columns of :func:`pattern_counts`.

    >>> df = pd.DataFrame({"timestamp": pd.to_datetime([0, 1, 2, 3], unit="s", utc=True),
    ...                    "content": ["ok 1", "ok 2", "ok 3", "kernel panic"]})
    >>> rare_patterns(df, max_count=1)["pattern"].tolist()
    ['kernel panic']
    """
    max_count = positive_int("max_count", max_count)
    counts = pattern_counts(df, column=column, miner=miner)
    rare = counts[counts["count"] <= max_count]
    return rare.sort_values(["count", "first_seen", "pattern"], ignore_index=True)


# --------------------------------------------------------------------------- comparing


def _seconds(value: Any, name: str) -> float:
    if isinstance(value, pd.Timestamp) and value.tzinfo is None:
        value = value.tz_localize("UTC")
    try:
        return to_epoch(value, name=name)
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"invalid {name} {value!r}: {exc}") from exc


def _span(times: pd.DatetimeIndex) -> float:
    if not len(times):
        return 0.0
    return max((times.max() - times.min()).total_seconds(), 1.0)


def compare_patterns(
    baseline: pd.DataFrame,
    window: Any,
    *,
    column: str = "content",
    miner: PatternMiner | None = None,
    threshold: float = 3.0,
    min_ratio: float = 2.0,
) -> pd.DataFrame:
    """The patterns of ``window`` against those of ``baseline``, one row per pattern, the most
    surprising first.

    ``window`` is a frame, or a ``(start, end)`` pair of times (any time
    :mod:`theia_frames.timeparse` reads; naive is UTC): then the window is the
    lines of ``baseline`` in ``start <= t < end`` and the baseline is every line
    before ``start``. Rates are per minute of each period: the pair's length
    for the window and from the first baseline line to ``start`` for the
    baseline; a frame's period runs from its first line to its last (at least
    one second). Frames without patterns get them from one miner over both,
    so their ids agree.

    Columns: ``pattern_id``, ``pattern``, ``status``, ``score``,
    ``baseline_count``, ``window_count``, ``baseline_per_minute``,
    ``window_per_minute``, ``ratio`` (window rate over baseline rate; ``inf``
    for a new pattern), ``first_seen``, ``last_seen`` (over both periods) and a
    ``sample`` line (from the window when it has one).

    ``score`` is the z-score of the conditional test for two Poisson rates:
    given the ``n`` lines of a pattern in both periods, under an unchanged
    rate the window's count is Binomial(``n``, ``p``) with ``p`` the window's
    share of the time; ``score = (k - n·p) / sqrt(n·p·(1-p))``. It needs no floor
    for a count of zero (a new or gone pattern scores by how many lines it had),
    grows with the evidence rather than the ratio alone (one line more of a
    rare pattern does not outrank hundreds of a spiking one), and is the
    standard normal approximation of that exact test.

    Order, the most surprising first: the new patterns (a kind of message never
    seen before), then spiking, dropping, gone and steady ones, each by
    ``|score|``, the largest first (then by the window's count).

    ``status``: ``new`` (none in the baseline), ``gone`` (none in the window),
    ``spiking`` (``ratio >= min_ratio`` and ``score >= threshold``), ``dropping``
    (``ratio <= 1/min_ratio`` and ``score <= -threshold``), else ``steady``.

    >>> t = pd.to_datetime(["2024-05-01 10:00", "2024-05-01 10:30", "2024-05-01 11:01", "2024-05-01 11:02"], utc=True)
    >>> df = pd.DataFrame({"timestamp": t, "content": ["job 1 done", "job 2 done", "disk full", "job 3 done"]})
    >>> compare_patterns(df, ("2024-05-01 11:00", "2024-05-01 11:05"))[["pattern", "status"]]
          pattern  status
    0   disk full     new
    1  job <*> done  steady
    """
    threshold = positive_number("threshold", threshold)
    if not isinstance(min_ratio, (int, float)) or min_ratio < 1:
        raise UsageError(f"min_ratio must be a number of at least 1, got {min_ratio!r}")
    if not isinstance(baseline, pd.DataFrame):
        raise UsageError(f"compare_patterns takes a DataFrame as baseline, got {type(baseline).__name__}")
    if isinstance(window, pd.DataFrame):
        if not all(c in f.columns for f in (baseline, window) for c in ("pattern", "pattern_id")):
            both = patterns(pd.concat([baseline, window], ignore_index=True), column, miner=miner)
            baseline, window = both.iloc[: len(baseline)], both.iloc[len(baseline) :]
        base_times = event_times(baseline, "compare_patterns")
        win_times = event_times(window, "compare_patterns")
        base_span, win_span = _span(base_times), _span(win_times)
        base, win = baseline, window
    elif isinstance(window, (tuple, list)) and len(window) == 2:
        start, end = _seconds(window[0], "window start"), _seconds(window[1], "window end")
        if end <= start:
            raise UsageError(f"the window must end after it starts, got {window!r}")
        whole = _patterned(baseline, "compare_patterns", column, miner)
        times = event_times(whole, "compare_patterns")
        stamps = (times.tz_localize("UTC") if times.tz is None else times).as_unit("ns").asi8 / 1e9
        in_window = (stamps >= start) & (stamps < end)
        before = stamps < start
        if not before.any():
            raise UsageError(f"compare_patterns: no line before the window's start {window[0]!r} to compare with")
        base, win = whole[before], whole[in_window]
        base_times, win_times = times[before], times[in_window]
        base_span, win_span = start - float(stamps[before].min()), end - start
        base_span = max(base_span, 1.0)
    else:
        raise UsageError(f"window must be a DataFrame or a (start, end) pair of times, got {window!r}")

    b = _summary(base, base_times, column, [])
    w = _summary(win, win_times, column, [])
    merged = b.merge(w, on="pattern_id", how="outer", suffixes=("_b", "_w"))
    out = pd.DataFrame({"pattern_id": merged["pattern_id"].astype(object)})
    out["pattern"] = merged["pattern_w"].where(merged["pattern_w"].notna(), merged["pattern_b"])
    k = merged["count_w"].fillna(0).astype(np.int64).to_numpy()
    m = merged["count_b"].fillna(0).astype(np.int64).to_numpy()
    n = k + m
    p = win_span / (win_span + base_span)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = (k - n * p) / np.sqrt(n * p * (1 - p))
        base_rate = m / (base_span / 60.0)
        win_rate = k / (win_span / 60.0)
        ratio = np.where(m > 0, win_rate / np.where(m > 0, base_rate, 1.0), np.inf)
    status = np.full(len(out), "steady", dtype=object)
    status[(ratio >= min_ratio) & (score >= threshold)] = "spiking"
    status[(ratio <= 1 / min_ratio) & (score <= -threshold)] = "dropping"
    status[m == 0] = "new"
    status[k == 0] = "gone"
    out["status"] = pd.Categorical(status, categories=list(_STATUSES))
    out["score"] = score
    out["baseline_count"], out["window_count"] = m, k
    out["baseline_per_minute"], out["window_per_minute"] = base_rate, win_rate
    out["ratio"] = ratio
    out["first_seen"] = merged[["first_seen_b", "first_seen_w"]].min(axis=1)
    out["last_seen"] = merged[["last_seen_b", "last_seen_w"]].max(axis=1)
    out["sample"] = merged["sample_w"].where(merged["sample_w"].notna(), merged["sample_b"])
    rank = out["status"].cat.codes.to_numpy()
    order = np.lexsort((out["pattern"].astype(str).to_numpy(), -k, -np.abs(np.nan_to_num(score)), rank))
    return out.iloc[order].reset_index(drop=True)
