"""The server side: the embedded collector, its store, and the background-thread helper.

- ``collector``: :class:`~theia_frames.server.collector.Collector` and :func:`~theia_frames.server.collector.serve`,
  the WebSocket server (both dialects and the extension), made of
  ``access`` (who may connect), ``filters`` (a peer's filter read), ``event_endpoint``, ``find_endpoint``
  (``/find`` and ``/chunks``), ``live_endpoint``, ``count_endpoint`` (the paths: objects given what they use),
  ``ingest`` (the writer thread: events decoded, checked, committed in groups),
  ``fanout`` (each commit matched against every live filter) and ``output`` (ready frames, shared helpers).
- ``store``: :class:`~theia_frames.server.store.EventStore`, SQLite holding time-indexed, compressed Arrow chunks;
  ``chunks`` (their format and bounds), ``query`` (snapshots and the sweep of a query) and ``verify`` (checking a store file).
- ``background``: an asyncio server run on a thread of its own (the collector, ``MockServer``).
"""

from .collector import Collector, serve
from .store import EventStore

__all__ = ["Collector", "serve", "EventStore"]
