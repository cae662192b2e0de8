"""Sensor-like events for demos, tests and benchmarks.

:func:`sensor_events` makes readings from several simulated sensors: each
source is a kind of sensor (``temp``, ``humidity``, ``pressure``, ``co2``,
``light``) at a site, tagged ``["sensor", <kind>, <site>]``, its content a
number with a unit that drifts like a real reading::

    >>> events = list(sensor_events(5, sources=3, rate=10, start=1_700_000_000, seed=1))
    >>> [e.source for e in events]
    ['/dev/sensors/temp-1', '/dev/sensors/humidity-2', '/dev/sensors/pressure-3', '/dev/sensors/temp-1', '/dev/sensors/humidity-2']
    >>> events[0].tags, events[1].tags
    (['sensor', 'temp', 'site-a'], ['sensor', 'humidity', 'site-b'])
    >>> [e.timestamp for e in events[:3]]
    [1700000000.0, 1700000000.1, 1700000000.2]
    >>> import re
    >>> all(re.fullmatch(r"-?\\d+\\.\\d(C|%|hPa|ppm|lx)", e.content) for e in events)
    True

The same ``seed`` gives the same events (ids included). :func:`simulate`
sends them to a collector in real time and, by default, returns once the
collector has confirmed it stored them.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .checks import positive_int, positive_number
from .event import Event
from .exceptions import UnconfirmedError, UsageError
from .timeparse import TimeLike, to_epoch

if TYPE_CHECKING:  # pragma: no cover
    from .client import Client

__all__ = ["sensor_events", "simulate", "SENSOR_KINDS"]

#: kind -> (unit, typical value, drift per reading, lowest, highest)
SENSOR_KINDS: dict[str, tuple[str, float, float, float, float]] = {
    "temp": ("C", 21.5, 0.2, -40.0, 60.0),
    "humidity": ("%", 45.0, 0.5, 0.0, 100.0),
    "pressure": ("hPa", 1013.2, 0.3, 900.0, 1100.0),
    "co2": ("ppm", 420.0, 4.0, 300.0, 5000.0),
    "light": ("lx", 300.0, 15.0, 0.0, 100000.0),
}
_SITES = ("site-a", "site-b", "site-c")
_VARIANT = "89ab"


def _sources(n: int) -> list[tuple[str, tuple[str, ...], str, float, float, float, float]]:
    kinds = list(SENSOR_KINDS)
    out: list[tuple[str, tuple[str, ...], str, float, float, float, float]] = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        unit, value, drift, lo, hi = SENSOR_KINDS[kind]
        site = _SITES[i % len(_SITES)]
        out.append((f"/dev/sensors/{kind}-{i + 1}", ("sensor", kind, site), unit, value, drift, lo, hi))
    return out


def sensor_events(
    n: int | None = None,
    *,
    sources: int = 4,
    rate: float | None = None,
    start: TimeLike = None,
    seed: int | None = None,
) -> Iterator[Event]:
    """``n`` sensor-like events (endless if None), round-robin over ``sources`` sensors.

    Timestamps start at ``start`` (default: now; any time of
    :mod:`theia_frames.timeparse`, e.g. ``"2024-05-01T09:50Z"``) and are ``1/rate`` seconds
    apart (``rate=None``: 1 ms apart). Ids are UUID4-shaped and, with a
    ``seed``, reproducible.

    >>> e = next(sensor_events(sources=1, start=10.0, seed=7))
    >>> e.source, e.timestamp, e.content.endswith("C"), len(e.id)
    ('/dev/sensors/temp-1', 10.0, True, 36)
    >>> next(sensor_events(start="2024-05-01T09:50Z")).timestamp
    1714557000.0
    """
    if n is not None and n < 0:
        raise UsageError(f"n must not be negative, got {n}")
    sources = positive_int("sources", sources)
    rate = positive_number("rate", rate, unit="events per second", none_ok=True)
    rng = random.Random(seed)
    step = 1.0 / rate if rate else 0.001
    t0 = time.time() if start is None else to_epoch(start, name="start")
    specs = _sources(sources)
    values = [value + rng.uniform(-10, 10) * drift for (_, _, _, value, drift, _, _) in specs]
    # One random UUID4-shaped prefix per run and a counter in the last 48 bits:
    # unique within a run, reproducible with a seed, and cheap for millions of events.
    h = f"{rng.getrandbits(80):020x}"
    prefix = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[int(h[16], 16) & 3]}{h[17:20]}-"
    salt = rng.getrandbits(48)
    random_ = rng.random
    count = len(specs)
    i = 0
    while n is None or i < n:
        k = i % count
        source, tags, unit, _, drift, lo, hi = specs[k]
        v = values[k] + (random_() * 2.0 - 1.0) * drift
        if v < lo or v > hi:
            v = lo if v < lo else hi
        values[k] = v
        yield Event(f"{prefix}{(salt + i) & 0xFFFFFFFFFFFF:012x}", t0 + i * step, source, list(tags), f"{v:.1f}{unit}")
        i += 1


def simulate(
    url_or_client: str | Client,
    *,
    rate: float,
    duration: float | None = None,
    n: int | None = None,
    sources: int = 4,
    seed: int | None = None,
    realtime: bool = True,
    stop: threading.Event | None = None,
    confirm: bool = True,
    progress: Callable[[int], Any] | None = None,
    **client_kw: Any,
) -> int:
    """Send sensor-like events at ``rate`` events per second; returns how many were sent.

    Runs for ``duration`` seconds or ``n`` events (the smaller), or until
    ``stop`` is set when neither is given. With ``realtime=True`` an event is
    sent no earlier than its own timestamp (timestamps start now, ``1/rate``
    apart), in small bursts; if sending is slower than ``rate`` the bursts
    grow. With ``realtime=False`` the same events are sent as fast as possible.
    Extra keyword arguments go to :class:`~theia_frames.client.Client` when a
    URL is given.

    With ``confirm=True`` (the default) it returns only once the collector has
    confirmed that every event sent is stored (:meth:`Client.flush
    <theia_frames.client.Client.flush>`, within the client's ``timeout``), so
    a query made next, from any client, finds them all; it raises what the
    flush raises: :class:`~theia_frames.exceptions.ServerError` when the
    collector did not store them, and
    :class:`~theia_frames.exceptions.UnconfirmedError` from a peer that cannot
    confirm (the upstream collector, ``batch=False``), after sending. Pass
    ``confirm=False`` to send to such a peer. ``progress`` is called with the
    number of events sent so far after each burst.

    >>> simulate("ws://127.0.0.1:6433", rate=100, duration=5)     # doctest: +SKIP
    500
    """
    from .client import Client

    rate = positive_number("rate", rate, unit="events per second")
    limit = n
    if duration is not None:
        if duration < 0:
            raise UsageError(f"duration must not be negative, got {duration}")
        by_time = int(duration * rate)
        limit = by_time if limit is None else min(limit, by_time)
    if limit is None and stop is None and not realtime:
        raise UsageError("simulate() without duration or n needs realtime=True or a stop event")

    own = not isinstance(url_or_client, Client)
    client = url_or_client if isinstance(url_or_client, Client) else Client(url_or_client, **client_kw)
    try:
        t0 = time.time()
        events = sensor_events(limit, sources=sources, rate=rate, start=t0, seed=seed)
        if realtime:
            sent = _paced(client, events, rate, stop, progress)
        else:
            sent = client.send_many(events)
            if progress is not None:
                progress(sent)
        if confirm:
            try:
                client.flush(client.timeout)
            except UnconfirmedError as exc:
                raise UnconfirmedError(
                    f"{sent} event(s) were sent, but {exc}; pass confirm=False to send without a confirmation"
                ) from exc
        return sent
    finally:
        if own:
            client.close()


def _paced(
    client: Client,
    events: Iterator[Event],
    rate: float,
    stop: threading.Event | None,
    progress: Callable[[int], Any] | None,
) -> int:
    max_burst = max(1, min(50_000, int(rate)))
    sent = 0
    burst: list[Event] = []
    pending = next(events, None)
    while pending is not None:
        if stop is not None and stop.is_set():
            break
        now = time.time()
        while pending is not None and pending.timestamp <= now and len(burst) < max_burst:
            burst.append(pending)
            pending = next(events, None)
        if burst:
            sent += client.send_many(burst)
            burst = []
            if progress is not None:
                progress(sent)
            continue
        if pending is None:
            break
        wait = min(pending.timestamp - time.time(), 0.05)
        if wait > 0:
            if stop is not None:
                stop.wait(wait)
            else:
                time.sleep(wait)
    return sent
