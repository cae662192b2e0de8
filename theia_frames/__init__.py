"""theia_frames: the theia event log in Jupyter and pandas.

    >>> import theia_frames as tf
    >>> with tf.serve(db=":memory:", port=0) as collector:          # doctest: +SKIP
    ...     with tf.Client(collector.url) as client:
    ...         client.send(tf.Event(source="/dev/temp", tags=["sensor"], content="21.5C"))
    ...         df = tf.to_dataframe(client.find(tf.Filter(0)))

Names are imported from their modules on first use, so ``import theia_frames``
stays fast and optional parts are only loaded when asked for. The ``df.theia``
accessor is registered as soon as pandas is imported too, before or after
this package (see :mod:`theia_frames.frames.accessor`).
"""

import importlib as _importlib
import importlib.util as _importlib_util
import sys as _sys
import warnings as _warnings
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # pure core
    "Event": "event",
    "new_event_id": "event",
    "EventFilter": "filter",
    "Filter": "filter",
    # exceptions
    "TheiaError": "exceptions",
    "TransportError": "exceptions",
    "ConnectError": "exceptions",
    "AuthenticationError": "exceptions",
    "ConnectionClosed": "exceptions",
    "SubscriberTooSlow": "exceptions",
    "TheiaTimeoutError": "exceptions",
    "ServerError": "exceptions",
    "ProtocolError": "exceptions",
    "DecodeError": "exceptions",
    "UsageError": "exceptions",
    "InvalidEventError": "exceptions",
    "InvalidFilterError": "exceptions",
    "UnconfirmedError": "exceptions",
    "StoreError": "exceptions",
    "MissingDependencyError": "exceptions",
    # client
    "Client": "client",
    "AsyncClient": "client",
    "FindResult": "client",
    "LiveStream": "client",
    "Gap": "client",
    "find": "client",
    "send": "client",
    "connect": "client",
    "sensor_events": "simulation",
    "simulate": "simulation",
    # collector
    "serve": "server.collector",
    "Collector": "server.collector",
    "EventStore": "server.store",
    # frames
    "EVENT_DTYPES": "frames.convert",
    "to_dataframe": "frames.convert",
    "to_arrow": "frames.convert",
    "to_polars": "frames.convert",
    "to_dask": "frames.dask",
    "iter_dataframes": "frames.convert",
    "batches_to_dataframe": "frames.convert",
    "to_event_table": "frames.events_table",
    "bucket": "frames.analysis",
    "explode_tags": "frames.analysis",
    "tag_matrix": "frames.analysis",
    "tag_counts": "frames.analysis",
    "extract": "frames.analysis",
    "SENSOR_PATTERN": "frames.analysis",
    "grep": "frames.analysis",
    "timeline": "frames.analysis",
    "patterns": "frames.patterns",
    "pattern_counts": "frames.patterns",
    "compare_patterns": "frames.patterns",
    "rare_patterns": "frames.patterns",
    "PatternMiner": "frames.patterns",
    "read_store": "frames.storefiles",
    "StoreReport": "frames.storefiles",
    "DamagedStoreWarning": "frames.storefiles",
    "read_log": "frames.logs",
    "iter_log": "frames.logs",
    "LogReport": "frames.logs",
    "UnparsedLogWarning": "frames.logs",
    "write_events": "frames.export",
    "read_events": "frames.export",
    # live
    "LiveFrame": "live.frame",
    "live_plot": "live.frame",
    "live_frames": "live.registry",
    "stop_all": "live.registry",
    "plot": "frames.plot",
}

__all__ = ["__version__", *_EXPORTS]

def __getattr__(name: str) -> _Any:
    """The public name ``name``, imported from its module on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'theia_frames' has no attribute {name!r}")
    value = getattr(_importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names (:data:`__all__`)."""
    return sorted(__all__)


# --------------------------------------------------------------------------- df.theia


def _register_accessor() -> None:
    try:
        _importlib.import_module(".frames.accessor", __name__)
    except Exception as exc:  # a broken pandas must not break the import that loaded it
        _warnings.warn(f"theia_frames could not register the df.theia accessor: {exc}", stacklevel=2)


class _AfterPandas:
    """A one-shot import hook: once pandas has been imported, register ``df.theia``.

    Importing pandas here would cost every user of the client or the collector
    half a second; the hook costs nothing until pandas is imported.
    """

    def find_spec(self, fullname: str, path: _Any = None, target: _Any = None) -> _Any:
        if fullname != "pandas":
            return None
        try:
            _sys.meta_path.remove(self)
        except ValueError:
            pass
        spec = _importlib_util.find_spec(fullname)
        loader = getattr(spec, "loader", None)
        exec_module = getattr(loader, "exec_module", None)
        if exec_module is None:
            return spec

        def exec_then_register(module: _Any) -> None:
            exec_module(module)
            _register_accessor()

        loader.exec_module = exec_then_register  # type: ignore[union-attr]  # this spec's loader only
        return spec


if "pandas" in _sys.modules:
    _register_accessor()
elif not any(isinstance(f, _AfterPandas) for f in _sys.meta_path):
    _sys.meta_path.insert(0, _AfterPandas())


if _TYPE_CHECKING:  # pragma: no cover
    from .frames.analysis import (
        SENSOR_PATTERN,
        bucket,
        explode_tags,
        extract,
        grep,
        tag_counts,
        tag_matrix,
        timeline,
    )
    from .client import AsyncClient, Client, FindResult, Gap, LiveStream, connect, find, send
    from .server.collector import Collector, serve
    from .event import Event, new_event_id
    from .exceptions import (
        AuthenticationError,
        ConnectError,
        ConnectionClosed,
        DecodeError,
        InvalidEventError,
        InvalidFilterError,
        MissingDependencyError,
        ProtocolError,
        ServerError,
        StoreError,
        SubscriberTooSlow,
        TheiaError,
        TheiaTimeoutError,
        TransportError,
        UnconfirmedError,
        UsageError,
    )
    from .frames.export import read_events, write_events
    from .filter import EventFilter, Filter
    from .frames.dask import to_dask
    from .frames.convert import (
        EVENT_DTYPES,
        batches_to_dataframe,
        iter_dataframes,
        to_arrow,
        to_dataframe,
        to_polars,
    )
    from .frames.events_table import to_event_table
    from .simulation import sensor_events, simulate
    from .server.store import EventStore
    from .frames.storefiles import DamagedStoreWarning, StoreReport, read_store
    from .frames.logs import LogReport, UnparsedLogWarning, iter_log, read_log
    from .frames.patterns import PatternMiner, compare_patterns, pattern_counts, patterns, rare_patterns
    from .live.frame import LiveFrame, live_plot
    from .live.registry import live_frames, stop_all
    from .frames.plot import plot
