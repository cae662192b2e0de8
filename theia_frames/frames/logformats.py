"""The log formats :func:`~theia_frames.frames.logs.read_log` knows, and ``<Field>`` templates as regexes.

Each preset of :data:`LOG_FORMATS` is a :class:`LogFormat`: a regex with named
groups matched against a whole line (or JSON lines, or logfmt), the format of
its times, which field is the source and which are tags by default, and whether
lines that start no record continue the one before (stack traces).

=================  ==============================================================  ===========  =====================
name               a line                                                          source       tags
=================  ==============================================================  ===========  =====================
``syslog``         ``<34>Dec 10 06:55:46 host sshd[24200]: message`` (RFC 3164;    ``host``     ``app``, ``level``
                   the ``<pri>`` is optional; no year: ``year=`` or the file's
                   date)
``rfc5424``        ``<34>1 2024-05-01T10:00:00.5Z host app 41 ID47 - message``     ``host``     ``app``, ``level``
``access``         Apache/Nginx access, common or combined:                       (the path)   ``method``, ``status``
                   ``1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.0"
                   200 2326 "-" "curl"`` (content: the whole line)
``apache-error``   ``[Sun Dec 04 04:47:44 2005] [error] message``, also 2.4's       (the path)   ``level``, ``module``
                   ``[... .123456 2000] [core:error] [pid 41:tid 7] message``
``iso``            a line starting with an ISO-8601 time, then maybe a level       (the path)   ``level``
``python``         ``2024-05-01 10:00:00,123 ERROR app.db: message`` (logging)    (the path)   ``level``, ``logger``
``jsonl``          one JSON object a line; the time in ``timestamp``, ``time``,    ``source``,  ``level``
                   ``ts``, ...; the content in ``message``, ``msg``, ...           ``host``
``logfmt``         ``time=2024-05-01T10:00:00Z level=info msg="up" port=80``       ``source``,  ``level``
                                                                                   ``host``
=================  ==============================================================  ===========  =====================

``iso`` and ``python`` records go on over the lines that follow them
(``multiline``); ``apache`` and ``nginx`` are the names of ``access`` too.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..exceptions import UsageError

__all__ = ["LogFormat", "LOG_FORMATS", "template_regex", "SYSLOG_SEVERITIES"]

#: The syslog severities by number (a priority's remainder by 8), as ``level``.
SYSLOG_SEVERITIES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")


@dataclass(frozen=True)
class LogFormat:
    """How lines of one kind read: see the module docstring.

    ``kind`` is ``"regex"`` (``regex`` matched against a whole line),
    ``"jsonl"`` or ``"logfmt"``. ``time_keys`` and ``content_keys`` are the
    fields that hold the time and the content (the first present, in any
    case); ``source`` the fields that may be the source (the first present),
    ``tags`` those that become tags. ``derive`` adds fields made from others.
    """

    name: str
    regex: str | None = None
    kind: str = "regex"
    time_format: Any = None
    source: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    multiline: bool = False
    time_keys: tuple[str, ...] = ("timestamp",)
    content_keys: tuple[str, ...] = ("content",)
    derive: Callable[[dict[str, pa.Array]], dict[str, pa.Array]] | None = None
    description: str = ""


def _syslog_fields(fields: dict[str, pa.Array]) -> dict[str, pa.Array]:
    """The ``level`` (severity name) and ``facility`` (number) of a syslog priority; RFC 5424's ``-`` as missing."""
    out = dict(fields)
    for name in ("host", "app", "procid", "msgid", "structured"):
        if name in out:
            out[name] = pc.if_else(pc.equal(out[name], "-"), pa.scalar(None, pa.string()), out[name])
    if "content" in out:
        out["content"] = pc.replace_substring_regex(out["content"], "^\ufeff", "")
    if "pri" in out:
        pri = pc.cast(out["pri"], pa.int64())
        severity = pc.cast(pc.bit_wise_and(pri, 7), pa.int64())
        out["level"] = pc.take(pa.array(SYSLOG_SEVERITIES, pa.string()), severity)
        out["facility"] = pc.cast(pc.shift_right(pri, 3), pa.string())
    else:
        out["level"] = pa.nulls(len(next(iter(fields.values()))), pa.string())
    return out


def _bsd_syslog_fields(fields: dict[str, pa.Array]) -> dict[str, pa.Array]:
    """RFC 3164's tag ``sshd[24200]`` as ``app`` and ``pid``, then :func:`_syslog_fields`.

    The line's regex takes the tag whole: with four groups RE2 matches a line
    in one pass, more than twice as fast as with five.
    """
    out = dict(fields)
    tag = fields["app"]
    parts = pc.extract_regex(pc.fill_null(tag, ""), r"^(?P<app>[^\[\]]+)\[(?P<pid>\d+)\]$")
    split = pc.is_valid(parts)
    out["app"] = pc.if_else(split, parts.field("app"), tag)
    out["pid"] = pc.if_else(split, parts.field("pid"), pa.scalar(None, pa.string()))
    return _syslog_fields(out)


def _access_fields(fields: dict[str, pa.Array]) -> dict[str, pa.Array]:
    """The ``method`` and ``path`` of an access log's request line."""
    out = dict(fields)
    parts = pc.extract_regex(pc.fill_null(fields["request"], ""), r"^(?P<method>[A-Z]+) (?P<path>\S+)")
    for name in ("method", "path"):
        values = pc.if_else(pc.is_valid(parts), parts.field(name), pa.scalar(None, pa.string()))
        out[name] = values
    return out


_ACCESS = (
    r'(?P<client>\S+) (?P<ident>\S+) (?P<user>\S+) \[(?P<timestamp>[^\]]+)\] '
    r'"(?P<request>(?:[^"\\]|\\.)*)" (?P<status>\d{3}|-) (?P<size>\d+|-)'
    r'(?: "(?P<referer>(?:[^"\\]|\\.)*)" "(?P<agent>(?:[^"\\]|\\.)*)")?.*'
)
_LEVELS = r"TRACE|DEBUG|INFO|NOTICE|WARN|WARNING|ERROR|ERR|CRITICAL|CRIT|FATAL|SEVERE|ALERT|EMERG"
_ISO_TIME = r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d(?::\d\d(?:[.,]\d+)?)?(?:Z|[+-]\d\d:?\d\d)?"
_JSON_TIME = ("timestamp", "time", "ts", "@timestamp", "datetime", "date", "t")
_JSON_CONTENT = ("message", "msg", "content", "log", "text")

_PRESETS = [
    LogFormat(
        "syslog",
        r"(?:<(?P<pri>\d{1,3})>)?(?P<timestamp>[A-Z][a-z]{2} +\d{1,2} \d\d:\d\d:\d\d) (?P<host>\S+) "
        r"(?:(?P<app>[^\s:]+): ?)?(?P<content>.*)",
        time_format="%b %d %H:%M:%S",
        source=("host",),
        tags=("app", "level"),
        derive=_bsd_syslog_fields,
        description="syslog, RFC 3164",
    ),
    LogFormat(
        "rfc5424",
        r"<(?P<pri>\d{1,3})>1 (?P<timestamp>\S+) (?P<host>\S+) (?P<app>\S+) (?P<procid>\S+) (?P<msgid>\S+) "
        r"(?P<structured>-|(?:\[(?:[^\]\\]|\\.)*\])+)(?: (?P<content>.*))?",
        source=("host",),
        tags=("app", "level"),
        derive=_syslog_fields,
        description="syslog, RFC 5424",
    ),
    LogFormat(
        "access",
        _ACCESS,
        time_format="%d/%b/%Y:%H:%M:%S %z",
        tags=("method", "status"),
        derive=_access_fields,
        description="Apache/Nginx access log, common or combined",
    ),
    LogFormat(
        "apache-error",
        r"\[(?P<timestamp>[^\]]+)\] \[(?:(?P<module>[^:\]]+):)?(?P<level>[^\]]+)\]"
        r"(?: \[pid (?P<pid>\d+)(?::tid (?P<tid>\d+))?\])? ?(?P<content>.*)",
        time_format=("%a %b %d %H:%M:%S %Y", "%a %b %d %H:%M:%S.%f %Y"),
        tags=("level", "module"),
        description="Apache error log (2.2 and 2.4)",
    ),
    LogFormat(
        "iso",
        rf"(?P<timestamp>{_ISO_TIME})(?:\s+\[?(?P<level>(?i:{_LEVELS}))\]?:?(?:\s|$))?\s*(?P<content>.*)",
        tags=("level",),
        multiline=True,
        description="a line starting with an ISO-8601 time",
    ),
    LogFormat(
        "python",
        r"(?P<timestamp>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:,\d+)?) (?P<level>[A-Z]+) (?P<logger>[^\s:]+): ?(?P<content>.*)",
        tags=("level", "logger"),
        multiline=True,
        description="Python logging: '%(asctime)s %(levelname)s %(name)s: %(message)s'",
    ),
    LogFormat(
        "jsonl",
        kind="jsonl",
        time_format=(None, "epoch"),
        source=("source", "host", "hostname"),
        tags=("level", "levelname", "severity"),
        time_keys=_JSON_TIME,
        content_keys=_JSON_CONTENT,
        description="JSON lines",
    ),
    LogFormat(
        "logfmt",
        kind="logfmt",
        time_format=(None, "epoch"),
        source=("source", "host", "hostname"),
        tags=("level", "lvl", "severity"),
        time_keys=_JSON_TIME,
        content_keys=_JSON_CONTENT,
        description="logfmt",
    ),
]

#: The presets by name (with ``apache-access``, ``nginx``, ``common``, ``combined`` and ``json`` as other names).
LOG_FORMATS: dict[str, LogFormat] = {f.name: f for f in _PRESETS}
for _alias, _name in (("apache-access", "access"), ("nginx", "access"), ("common", "access"), ("combined", "access"),
                      ("json", "jsonl"), ("rfc3164", "syslog")):
    LOG_FORMATS[_alias] = LOG_FORMATS[_name]

_FIELD = re.compile(r"<([^<>]+)>")


def template_regex(template: str) -> str:
    """A ``<Field>`` template (logparser's ``log_format``) as a regex with a named group per field.

    A field matches as little as it can (the last one, the rest of the line);
    the text between fields is literal, except that spaces match any run of
    whitespace and a backslash takes the next character as it is (so
    logparser's ``\\[<Time>\\]`` works as written).

    >>> template_regex("<Date> <Time> <Level> <Component>: <Content>")
    '(?P<Date>.*?)\\\\s+(?P<Time>.*?)\\\\s+(?P<Level>.*?)\\\\s+(?P<Component>.*?):\\\\s+(?P<Content>.*?)'
    >>> import re; re.fullmatch(template_regex(r"\\[<Time>\\] <Program> - <Content>"), "[10.30 16:49:06] chrome.exe - open").groupdict()
    {'Time': '10.30 16:49:06', 'Program': 'chrome.exe', 'Content': 'open'}
    """
    if not isinstance(template, str) or not _FIELD.search(template):
        raise UsageError(f"invalid template {template!r}: expected fields in angle brackets, e.g. '<Time> <Level> <Content>'")
    out: list[str] = []
    seen: set[str] = set()
    for i, part in enumerate(_FIELD.split(template)):
        if i % 2:
            if not re.fullmatch(r"[A-Za-z_]\w*", part) or part in seen:
                why = "used twice" if part in seen else "not a name (letters, digits, _)"
                raise UsageError(f"invalid template {template!r}: field <{part}> is {why}")
            seen.add(part)
            out.append(f"(?P<{part}>.*?)")
            continue
        literal = []
        j = 0
        while j < len(part):
            c = part[j]
            if c == "\\" and j + 1 < len(part):
                literal.append(re.escape(part[j + 1]))
                j += 2
            elif c == " ":
                while j < len(part) and part[j] == " ":
                    j += 1
                literal.append(r"\s+")
            else:
                literal.append(re.escape(c))
                j += 1
        out.append("".join(literal))
    return "".join(out)
