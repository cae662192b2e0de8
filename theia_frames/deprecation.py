"""Old names that still work for a release, with a ``DeprecationWarning`` that names the new one.

One rule for every rename in the package: the old name does what the new one
does, warns once per call site (Python's default warning filter), and giving
both the old and the new name is a :class:`~theia_frames.exceptions.UsageError`.

    >>> import warnings
    >>> @renamed_arguments(chunk_size="batch_size")
    ... def rows(*, batch_size: int = 10) -> int:
    ...     return batch_size
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     rows(chunk_size=3)
    3
    >>> print(caught[0].message)
    chunk_size= of rows() is deprecated; use batch_size= (the old name will be removed in a future release)
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, MutableMapping
from typing import Any, TypeVar, cast

from .exceptions import UsageError

__all__ = ["warn_deprecated", "renamed_arguments", "take_renamed"]

F = TypeVar("F", bound=Callable[..., Any])


def warn_deprecated(old: str, new: str, *, stacklevel: int = 2) -> None:
    """Warn that ``old`` is deprecated in favour of ``new``.

    ``stacklevel`` counts as for :func:`warnings.warn` from the caller's point
    of view: 2 (the default) points at whoever called the function that calls
    this one.
    """
    warnings.warn(
        f"{old} is deprecated; use {new} (the old name will be removed in a future release)",
        DeprecationWarning,
        stacklevel=stacklevel + 1,
    )


def take_renamed(kwargs: MutableMapping[str, Any], old: str, new: str, where: str, *, stacklevel: int = 2) -> None:
    """Move the keyword argument ``old`` of ``kwargs`` to ``new``, with a warning.

    ``where`` names the function (``"query()"``) in the warning and the error.
    Nothing happens when ``old`` is not there; both there is a ``UsageError``.
    """
    if old not in kwargs:
        return
    if new in kwargs:
        raise UsageError(f"{where} got both {old}= and {new}=; {old}= is the deprecated name of {new}=, give only {new}=")
    warn_deprecated(f"{old}= of {where}", f"{new}=", stacklevel=stacklevel + 1)
    kwargs[new] = kwargs.pop(old)


def renamed_arguments(**renames: str) -> Callable[[F], F]:
    """Decorate a function whose keyword arguments were renamed (``old="new"``).

    The function keeps only the new names in its signature; a call with an old
    name warns and is passed on under the new one.
    """

    def decorate(function: F) -> F:
        # a class is called by its name: Collector(), not Collector.__init__()
        name = function.__qualname__.rsplit(".", 2)[-2] if function.__name__ == "__init__" else function.__name__
        where = f"{name}()"

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in renames.items():
                take_renamed(kwargs, old, new, where)
            return function(*args, **kwargs)

        return cast(F, wrapper)

    return decorate
