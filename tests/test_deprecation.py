"""One name per idea: every renamed argument still works under its old name, with a warning.

The rule itself (``theia_frames.deprecation``), then each alias: it warns,
names the new name, points at the caller, and does what the new name does.
"""

from __future__ import annotations

import warnings

import pytest

from theia_frames.deprecation import renamed_arguments, take_renamed, warn_deprecated
from theia_frames.exceptions import UsageError


# --------------------------------------------------------------------------- the rule


@renamed_arguments(old="new")
def _renamed(*, new: int = 0) -> int:
    return new


def test_an_old_name_warns_names_the_new_one_and_points_at_the_caller():
    with pytest.warns(DeprecationWarning, match=r"old= of _renamed\(\) is deprecated; use new=") as caught:
        assert _renamed(old=3) == 3
    assert caught[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _renamed(new=4) == 4  # the new name does not warn


def test_old_and_new_name_together_is_a_usage_error():
    with pytest.raises(UsageError, match="both old= and new="):
        _renamed(old=1, new=2)


def test_take_renamed_leaves_other_arguments_alone():
    kwargs = {"a": 1}
    take_renamed(kwargs, "old", "new", "f()")
    assert kwargs == {"a": 1}


def test_warn_deprecated_text():
    with pytest.warns(DeprecationWarning, match=r"^x is deprecated; use y \(the old name will be removed"):
        warn_deprecated("x", "y")

