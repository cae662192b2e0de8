"""theia_frames.matching: a literal's search over a column's bytes answers as Arrow's kernel."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from hypothesis import given, settings
from hypothesis import strategies as st

from theia_frames.matching import contains

# a small alphabet makes occurrences, overlaps and occurrences across rows common
texts = st.lists(st.one_of(st.none(), st.text(alphabet="aab é", max_size=8)), max_size=60)
literals = st.text(alphabet="aab é", min_size=1, max_size=3)


def expected(array: pa.Array, literal: str) -> np.ndarray:
    return np.array(pc.fill_null(pc.match_substring(array, literal), False).to_numpy(zero_copy_only=False), dtype=bool)


@settings(max_examples=300, deadline=None)
@given(values=texts, literal=literals, large=st.booleans(), cut=st.integers(0, 5), padded=st.booleans())
def test_contains_answers_as_arrows_kernel(values, literal, large, cut, padded):
    # padded: rows without the literal after them keep its occurrences rare (the search's
    # path); unpadded, most draws hold it in many rows (the kernel's)
    array = pa.array(values + ["z"] * (2_000 if padded else 0), pa.large_string() if large else pa.string())
    array = array.slice(min(cut, len(array)))  # an array that starts inside its buffers
    assert contains(array, literal).tolist() == expected(array, literal).tolist()


def test_a_rare_literal_in_a_large_column_and_a_common_one():
    rng = np.random.default_rng(3)
    words = np.where(rng.random(50_000) < 0.01, "error", "ok")
    array = pa.array([f"request {k} finished {w} in {k % 97} ms" for k, w in enumerate(words.tolist())])
    for literal in ("error", "request", "ms", "finished ok", "é"):
        got = contains(array, literal)
        assert got.tolist() == expected(array, literal).tolist()
    assert contains(array, "error").sum() == (words == "error").sum()
