"""A small test server that behaves like the upstream theia collector (0.9.x), for
the faults the real one (``tests/upstream.py``) cannot be made to show on cue:
an abrupt drop in the middle of a find, extra messages around the results, a
normal close.

What it shares with the real one (``docs/protocol.md``; the differential tests
in ``tests/test_upstream.py`` hold the real one to it):

- ``ok`` as a text message after each accepted filter, then one binary message
  per event, and a ``/find`` connection that is **never closed**;
- ``/find`` rejects a missing or zero ``start`` with
  ``{"error": "Missing start timestamp"}`` (and the connection stays open);
- ``/live`` accepts only the keys ``id``, ``source``, ``start``, ``end``,
  ``content``, ``tags``, with integer ``start``/``end``: a float start gets
  ``{"error": "invalid value for criteria start"}``, an unknown key an error too;
- upstream matching, which is *looser* than the client's filter: ``/find``
  matches tags by exact membership (skipped for events without tags) and
  content with a regex search; ``/live`` matches tags by exact membership and
  content with ``re.match``;
- the file store's order: minute files in time order, each in arrival order
  (``desc`` reverses each file, not the result), a late event kept in a later
  file that a ``/find`` with an earlier ``end`` does not read;
- no subprotocol is ever selected (an offered one is ignored).

Knobs for tests: ``find_prefix`` / ``find_suffix`` (extra raw messages sent
around the results), ``drop_find_after`` (abort the TCP connection after that
many results), ``close_find`` (close normally after the results, as this
project's collector does), ``trickle_find`` (``(i, seconds)``: write the
``i``-th result's frame in 20 pieces spread over that many seconds, as a
slow link delivers a large event).

    >>> with UpstreamLike() as server:
    ...     server.url.startswith("ws://127.0.0.1:")
    True
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import struct
import threading
from collections.abc import AsyncIterator
from typing import Any

from websockets.asyncio.server import ServerConnection, serve

from theia_frames.server.background import BackgroundLoop
from theia_frames.protocol.codec import decode, encode
from theia_frames.event import Event
from theia_frames.exceptions import DecodeError

__all__ = ["UpstreamLike"]

_LIVE_CRITERIA = {"id": str, "source": str, "start": int, "end": int, "content": str, "tags": list}


def _find_match(event: Event, criteria: dict[str, Any]) -> bool:
    start, end = criteria.get("start"), criteria.get("end")
    if event.timestamp < start or (end is not None and event.timestamp > end):
        return False
    tags = criteria.get("tags")
    if tags is not None and event.tags:
        if not all(t in event.tags for t in tags):
            return False
    content = criteria.get("content")
    if content and event.content and not re.search(content, event.content):
        return False
    return True


def _live_match(event: Event, criteria: dict[str, Any]) -> bool:
    if "id" in criteria and not re.match(criteria["id"], event.id):
        return False
    if "source" in criteria and not re.match(criteria["source"], event.source):
        return False
    if "start" in criteria and event.timestamp < criteria["start"]:
        return False
    if "end" in criteria and event.timestamp > criteria["end"]:
        return False
    if "tags" in criteria and not all(t in event.tags for t in criteria["tags"]):
        return False
    if "content" in criteria and not re.match(criteria["content"], event.content):
        return False
    return True


class UpstreamLike:
    """An upstream-like collector on a free loopback port, run in a background thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.events: list[Event] = []
        self.filters: list[tuple[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.find_prefix: list[bytes | str] = []
        self.find_suffix: list[bytes | str] = []
        self.drop_find_after: int | None = None
        self.close_find = False
        self.trickle_find: tuple[int, float] | None = None
        self._live: dict[ServerConnection, dict[str, Any]] = {}
        self._open: set[ServerConnection] = set()
        self._background = BackgroundLoop(self._serving, name="upstream-like")
        self._received = threading.Condition()

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}" if self._background.loop is not None else ""

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> UpstreamLike:
        self._background.start(timeout=10)
        return self

    def stop(self) -> None:
        self._background.stop(timeout=10)

    def __enter__(self) -> UpstreamLike:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @contextlib.asynccontextmanager
    async def _serving(self) -> AsyncIterator[None]:
        async with serve(self._handler, self.host, self.port, close_timeout=1) as server:
            self.port = server.sockets[0].getsockname()[1]
            yield

    def wait_for_events(self, n: int, timeout: float = 10.0) -> bool:
        """Block until at least ``n`` events were received (False on timeout)."""
        with self._received:
            return self._received.wait_for(lambda: len(self.events) >= n, timeout)

    def kick(self) -> None:
        """Close every open connection normally (code 1000), as a restarting server would."""
        async def close_all() -> None:
            # not awaited: a client that is not reading answers the close later
            for ws in list(self._open):
                asyncio.ensure_future(ws.close())

        self._background.call(close_all(), timeout=10)

    @property
    def live_subscribers(self) -> int:
        return len(self._live)

    def _search(self, criteria: dict[str, Any]) -> list[Event]:
        """What upstream's file store returns: its minute files in time order,
        each in arrival order (each reversed for ``desc``); a file that starts
        after ``end`` is not read, even when it holds an older, late event."""
        files: list[tuple[float, float, list[Event]]] = []  # (start, end, events), sorted by start
        for event in self.events:
            ts = event.timestamp
            if not files or files[0][0] > ts or files[-1][1] < ts:
                files.append((ts, ts + 60, [event]))
                files.sort(key=lambda f: f[0])
            else:
                next(f for f in files if f[1] >= ts)[2].append(event)
        end = criteria.get("end")
        found: list[Event] = []
        for first, last, held in files:
            if last < criteria["start"]:
                continue
            if end and first > end:
                break
            matched = [e for e in held if _find_match(e, criteria)]
            found.extend(reversed(matched) if criteria.get("order") == "desc" else matched)
        return found

    # ------------------------------------------------------------------ endpoints
    async def _handler(self, ws: ServerConnection) -> None:
        self.headers.append(dict(ws.request.headers.raw_items()))
        path = ws.request.path
        self._open.add(ws)
        try:
            if path == "/event":
                await self._on_event(ws)
            elif path == "/find":
                await self._on_find(ws)
            elif path == "/live":
                await self._on_live(ws)
        finally:
            self._live.pop(ws, None)
            self._open.discard(ws)

    async def _on_event(self, ws: ServerConnection) -> None:
        async for message in ws:
            data = message.encode() if isinstance(message, str) else message
            try:
                event = decode(data)
            except DecodeError:
                continue  # upstream logs the parse error and carries on
            with self._received:
                self.events.append(event)
                self._received.notify_all()
            for sub, criteria in list(self._live.items()):
                if _live_match(event, criteria):
                    try:
                        await sub.send(encode(event))
                    except Exception:
                        self._live.pop(sub, None)

    async def _on_find(self, ws: ServerConnection) -> None:
        async for message in ws:
            try:
                criteria = json.loads(message)
                if not criteria.get("start"):
                    raise ValueError("Missing start timestamp")
            except Exception as exc:
                await ws.send(json.dumps({"error": str(exc)}))
                continue
            self.filters.append(("find", criteria))
            await ws.send("ok")
            for extra in self.find_prefix:
                await ws.send(extra)
            found = self._search(criteria)
            for i, event in enumerate(found):
                if self.drop_find_after is not None and i >= self.drop_find_after:
                    ws.transport.abort()
                    return
                if self.trickle_find is not None and i == self.trickle_find[0]:
                    await self._trickle(ws, encode(event), self.trickle_find[1])
                    continue
                await ws.send(encode(event))
            for extra in self.find_suffix:
                await ws.send(extra)
            if self.close_find:
                await ws.close()
                return

    @staticmethod
    async def _trickle(ws: ServerConnection, payload: bytes, seconds: float, pieces: int = 20) -> None:
        # One unfragmented binary frame, written straight to the socket a piece at a time
        # (no extension is negotiated with our client, so the frame is sent as is).
        n = len(payload)
        head = bytes((0x82, n)) if n < 126 else (
            struct.pack("!BBH", 0x82, 126, n) if n < 65536 else struct.pack("!BBQ", 0x82, 127, n))
        frame = head + payload
        step = -(-len(frame) // pieces)
        for at in range(0, len(frame), step):
            if ws.transport.is_closing():
                return
            ws.transport.write(frame[at : at + step])
            await asyncio.sleep(seconds / pieces)

    async def _on_live(self, ws: ServerConnection) -> None:
        async for message in ws:
            try:
                criteria = json.loads(message)
                for key, value in criteria.items():
                    if key not in _LIVE_CRITERIA:
                        raise KeyError(key)
                    if not isinstance(value, _LIVE_CRITERIA[key]):
                        raise ValueError(f"invalid value for criteria {key}")
            except Exception as exc:
                await ws.send(json.dumps({"error": str(exc)}))
                continue
            self.filters.append(("live", criteria))
            self._live[ws] = criteria
            await ws.send("ok")
