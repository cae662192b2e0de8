"""The variable parts of log messages, masked with Arrow's RE2 kernels before their patterns are mined.

A mask is a regular expression (RE2 syntax) and its replacement; every mask
runs over a whole column at once (``pyarrow.compute.replace_substring_regex``),
so a million lines cost a few passes of RE2, not a million Python calls.
:data:`DEFAULT_MASKS` is one generic set, written for logs in general, not for
any one of them: each mask says why what it replaces is a value and not a
word of the message.

    >>> import pyarrow as pa
    >>> mask_values(pa.array(["Accepted password for root from 10.0.0.5 port 22 ssh2"])).to_pylist()
    ['Accepted password for root from <*> port <*> ssh2']
    >>> mask_values(pa.array(["PacketResponder 1 for block blk_-1608 terminating"])).to_pylist()
    ['PacketResponder <*> for block <*> terminating']

Tokens: the masks that work on whole tokens treat white space and the
punctuation of ``key=value``, ``key:value``, lists and brackets
(:data:`TOKEN_SEPARATORS`) as the edges of a token, so ``uid=0`` and
``onExtend:1514038530000`` keep their key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..exceptions import UsageError

__all__ = ["DEFAULT_MASKS", "TOKEN_SEPARATORS", "VARIABLE", "Mask", "check_masks", "mask_values"]

#: What a masked value is replaced with: the wildcard of drain3 templates.
VARIABLE = "<*>"

#: Characters that end a token besides white space (in a regex character class).
TOKEN_SEPARATORS = r"=:,\[\](){}"

_SEP = r"\s" + TOKEN_SEPARATORS
_TOK = "[^" + _SEP + "]"  # one character of a token
_EDGE = "(^|[" + _SEP + "])"  # the start of a token, kept by the replacement as \1

#: One mask: (name, RE2 pattern, replacement). ``\1`` in a replacement is the pattern's first group.
Mask = tuple[str, str, str]

#: The generic masks, in the order they run (earlier ones see the raw text).
DEFAULT_MASKS: tuple[Mask, ...] = (
    # a URL is an address, whatever its scheme: never a word of the message
    ("url", r"[a-zA-Z][a-zA-Z0-9+.-]*://\S+", VARIABLE),
    # an e-mail address names a party, like a user name
    ("email", r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+", VARIABLE),
    # a UUID is an identifier by construction
    ("uuid", r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", VARIABLE),
    # host:port or address:port (a port has at most five digits): an endpoint, one value
    ("endpoint", r"[\w-]+(?:\.[\w-]+)*:\d{1,5}\b", VARIABLE),
    # IPv6 (and other colon-separated hex groups such as MAC addresses)
    ("ipv6", r"(?:[0-9a-fA-F]{1,4}:){2,7}[0-9a-fA-F]{1,4}\b", VARIABLE),
    # a quantity with its unit ("18.4 KB", "<1 sec", "250ms") is one value, whatever its width
    (
        "quantity",
        r"[<>]?=?\d+(?:\.\d+)?\s?(?:ns|us|ms|s|sec|secs|seconds|min|mins|minutes|h|hours|days"
        r"|B|KB|MB|GB|TB|kB|KiB|MiB|GiB|TiB|bytes)\b",
        VARIABLE,
    ),
    # quoted text is a value the message quotes
    ("double-quoted", r"\"[^\"]*\"", VARIABLE),
    ("single-quoted", r"(^|[\s=:(\[])'[^']*'", r"\1" + VARIABLE),
    # a file path (starting with /) names a file, not a kind of message
    ("path", r"(^|[\s=:(\[])(?:/" + _TOK + r"+)+/?", r"\1" + VARIABLE),
    # a token with two digits or more: numbers, ids, hex, addresses, times, blk_-123, task_01_02
    ("digits", _EDGE + _TOK + r"*\d" + _TOK + r"*\d" + _TOK + "*", r"\1" + VARIABLE),
    # a token with one digit, unless it is a name ending in it (ssh2, SOCKS5, eth0, log4j has two)
    (
        "digit",
        _EDGE + r"(?:\d" + _TOK + "*|"
        + _TOK + "*[^A-Za-z\\d" + _SEP + "]" + _TOK + r"*\d" + _TOK + "*|"
        + _TOK + r"*\d" + _TOK + "*[^\\d" + _SEP + "]" + _TOK + "*)",
        r"\1" + VARIABLE,
    ),
)


def check_masks(masks: Any) -> tuple[Mask, ...]:
    """``masks`` as a tuple of (name, pattern, replacement), checked: each a pair ``(pattern,
    replacement)`` or a triple with a name first; every pattern compiles in RE2.

    >>> check_masks([(r"user \\w+", "user <*>")])
    (('mask 1', 'user \\\\w+', 'user <*>'),)
    >>> check_masks([("(", "x")])
    Traceback (most recent call last):
    ...
    theia_frames.exceptions.UsageError: mask 1 is not a valid RE2 pattern '(': ...
    """
    if masks is None:
        return ()
    if isinstance(masks, (str, bytes)) or not isinstance(masks, Sequence):
        raise UsageError(f"masks must be a list of (pattern, replacement) pairs, got {masks!r}")
    out: list[Mask] = []
    for i, mask in enumerate(masks, 1):
        if not isinstance(mask, (tuple, list)) or len(mask) not in (2, 3) or not all(isinstance(m, str) for m in mask):
            raise UsageError(f"mask {i} must be a (pattern, replacement) pair of strings, got {mask!r}")
        name, pattern, replacement = (f"mask {i}", *mask) if len(mask) == 2 else tuple(mask)
        try:
            pc.replace_substring_regex(pa.array([""], pa.string()), pattern=pattern, replacement=replacement)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise UsageError(f"{name} is not a valid RE2 pattern {pattern!r}: {exc}") from exc
        out.append((name, pattern, replacement))
    return tuple(out)


def mask_values(values: pa.Array | pa.ChunkedArray, masks: Sequence[Mask] = DEFAULT_MASKS) -> pa.Array | pa.ChunkedArray:
    """``values`` (Arrow strings) with every mask applied in turn, over the whole column at once.

    >>> mask_values(pa.array(["close, 451 bytes sent, 18846 bytes (18.4 KB) received, lifetime <1 sec"])).to_pylist()
    ['close, <*> sent, <*> (<*>) received, lifetime <*>']
    """
    for _name, pattern, replacement in masks:
        values = pc.replace_substring_regex(values, pattern=pattern, replacement=replacement)
    return values
