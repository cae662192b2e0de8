"""A DataFrame that grows as events arrive: :class:`LiveFrame`.

A :class:`LiveFrame` subscribes to ``/live`` with a filter and appends every
batch the stream delivers to a columnar buffer, on a background thread.
``.df`` is the current DataFrame, with the same dtypes as
:func:`~theia_frames.frames.convert.to_dataframe`::

    >>> import theia_frames as tf
    >>> with tf.serve(db=":memory:", port=0) as collector:          # doctest: +SKIP
    ...     with tf.LiveFrame(collector.url, tf.Filter().match_tag("sensor"), window="10min") as live:
    ...         tf.simulate(collector.url, rate=200, duration=2)
    ...         live.df.tail()

The buffer is an :class:`~theia_frames.live.buffer.EventBuffer`: Arrow
record batches, not a DataFrame, bounded by ``max_rows`` and/or ``window``
(older rows roll off). ``.df`` is built from the buffer only when something
changed since the last call (a version counter); otherwise the cached frame
is returned.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa

from ..protocol.arrow import event_schema
from ..exceptions import UsageError
from ..filter import EventFilter, as_filter
from .buffer import EventBuffer, parse_window
from .registry import current_cell, register, unregister
from .status import LiveStatus, Phase, State, in_words
from ..timeparse import DurationLike
from .widget import LiveView, Mode, PlotFunction, require_widget, view_options

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "LiveFrame", "LiveStatus", "EventBuffer", "State", "Phase", "BatchHook", "parse_window", "in_words",
    "check_client_options", "live_plot",
]

#: A hook receives each new batch as a DataFrame (on the consumer thread).
BatchHook = Callable[["pd.DataFrame"], Any]

# Arrivals older than this are not counted in the rate.
_RATE_SPAN = 5.0
# Errors kept for inspection; the count keeps going up beyond it.
_KEEP_ERRORS = 100


# --------------------------------------------------------------------------- the live frame


class _Receiver(Protocol):
    def receive(self, filter: EventFilter) -> Any: ...


def check_client_options(
    where: str,
    client_or_url: object,
    options: Mapping[str, Any],
) -> dict[str, Any]:
    """The keyword arguments for the :class:`~theia_frames.client.Client` that
    ``where`` (``"LiveFrame()"``) opens, checked against the ones it takes.

    A name :class:`Client` does not take, or options when ``client_or_url`` is
    a client already open (they would be ignored), raise
    :class:`~theia_frames.exceptions.UsageError` naming them.
    """
    merged = dict(options)
    if not merged:
        return merged
    from ..client.options import CLIENT_OPTIONS, split_client_options

    _, unknown = split_client_options(merged)
    if unknown:
        raise UsageError(
            f"{where} got unexpected keyword argument(s) {', '.join(map(repr, sorted(unknown)))}; besides its own it "
            f"takes the Client keyword arguments: {', '.join(sorted(CLIENT_OPTIONS))}"
        )
    if not isinstance(client_or_url, str):
        raise UsageError(
            f"{where} got Client keyword arguments ({', '.join(sorted(merged))}) with a client already open: "
            "they apply only when it opens its own client from a URL; give them to that Client instead"
        )
    return merged


class LiveFrame:
    """A DataFrame fed by a live subscription, on a background thread.

    ``client_or_url`` is a :class:`~theia_frames.client.Client` (left open
    when the frame stops) or a URL (a client is opened with the keyword
    arguments :class:`~theia_frames.client.Client` takes, given here as they
    are to :func:`~theia_frames.client.find`: ``LiveFrame(url, filter,
    timeout=5)``, and closed when the frame stops). ``filter`` selects
    the events (an :class:`~theia_frames.filter.EventFilter`, its dict form,
    or None for everything from now on).

    ``max_rows`` and/or ``window`` (seconds, ``timedelta`` or text like
    ``"10min"``, measured back from the newest event timestamp) bound the
    rows held. ``on_batch`` hooks are called with each new batch as a
    DataFrame; they run on the consumer thread, so keep them short.

    ``reconnect=True`` (the default) keeps the subscription alive when the
    collector goes away: it comes back with backoff, fetches what was stored
    meanwhile and drops repeats by id (see ``Client.receive``, which takes
    ``receive_options`` such as ``max_backoff``); :meth:`status` says
    ``reconnecting since <when> (attempt n): <why>`` while it is away, and
    counts the reconnects, the time away and the events recovered.

    ``start()`` subscribes (connection errors are raised there) and starts the
    consumer; ``stop()`` closes the subscription and ends the thread.
    ``pause()`` freezes :attr:`df` (events keep arriving into the bounded
    buffer and show up on ``resume()``). As a context manager it starts on
    entry and stops on exit.
    """

    def __init__(
        self,
        client_or_url: str | _Receiver,
        filter: EventFilter | Mapping[str, Any] | None = None,
        *,
        max_rows: int | None = None,
        window: DurationLike | None = None,
        on_batch: BatchHook | Iterable[BatchHook] | None = None,
        reconnect: bool = True,
        receive_options: Mapping[str, Any] | None = None,
        **client_kw: Any,
    ) -> None:
        filter = as_filter(filter)
        if isinstance(client_or_url, str):
            self.url: str | None = client_or_url
            self._client: Any = None
            self._owns_client = True
        elif hasattr(client_or_url, "receive"):
            self.url = getattr(client_or_url, "url", None)
            self._client = client_or_url
            self._owns_client = False
        else:
            raise UsageError(f"LiveFrame needs a Client or a URL, got {type(client_or_url).__name__}")
        self.filter: EventFilter = filter
        self._client_options = check_client_options("LiveFrame()", client_or_url, client_kw)
        self._receive_options = {"reconnect": bool(reconnect), **dict(receive_options or {})}
        self._buffer = EventBuffer(max_rows=max_rows, window=window)
        self._hooks: list[BatchHook] = []
        if callable(on_batch):
            self._hooks.append(on_batch)
        elif on_batch is not None:
            self._hooks.extend(on_batch)

        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._state: State = "new"
        self._stream: Any = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._received = 0
        self._arrivals: deque[tuple[float, int]] = deque()
        self._errors: deque[BaseException] = deque(maxlen=_KEEP_ERRORS)
        self._error_count = 0
        self._stream_errors_seen = 0
        self._stream_skipped = 0
        #: the exception that ended the stream, if it failed
        self.error: BaseException | None = None
        # What readers see: (version, batches). Frozen while paused.
        self._visible: tuple[int, tuple[Any, ...]] = (0, ())
        self._appended_at_pause = 0
        self._started = 0.0
        self._df_cache: tuple[int, Any] | None = None
        self._connecting = False
        # the current drop, as the consumer saw it: its cause, the last error seen, failed attempts
        self._drop: tuple[Any, Any, int] | None = None
        # the periods the connection was away: [start, end or None], seconds since the epoch
        self._outages: deque[list[float | None]] = deque(maxlen=_KEEP_ERRORS)
        self._reconnects_seen = 0
        #: the notebook cell (and run of it) that made this frame, where the kernel says
        self.cell = current_cell()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> LiveFrame:
        """Subscribe and start the consumer thread (returns self; a no-op when running).

        Raises the client's connection errors (e.g. :class:`~theia_frames.exceptions.ConnectError`).
        A stopped frame cannot be started again: make a new one.
        """
        with self._start_lock:  # one subscription, however many threads call start()
            with self._lock:
                if self._state in ("running", "paused"):
                    return self
                if self._state != "new":
                    raise UsageError(f"this LiveFrame is {self._state}; make a new one to subscribe again")
            self._connecting = True
            try:
                stream = self._open()
            except BaseException:
                self._close_client()
                raise
            finally:
                self._connecting = False
            with self._lock:
                stopped = self._state != "new"  # stop() was called while subscribing
                if not stopped:
                    self._stream = stream
                    self._state = "running"
                    self._thread = threading.Thread(
                        target=self._run, args=(stream,), name=f"theia-live {self.url or ''}".strip(), daemon=True
                    )
                    self._thread.start()
            if stopped:
                stream.close()
                self._close_client()
                return self
            # a later run of the cell that made a frame replaces it
            for earlier in register(self, self.cell):
                earlier.stop()
            return self

    def stop(self, timeout: float | None = 5.0) -> None:
        """Close the subscription and end the consumer thread (idempotent).

        The rows held stay readable. Waits up to ``timeout`` seconds for the thread.
        """
        with self._lock:
            if self._state == "new":
                self._state = "stopped"
            self._stopping = True
            stream, thread = self._stream, self._thread
            # a stopped frame shows everything it received
            self._visible = (self._buffer.version, self._buffer.batches)
            self._changed.notify_all()
        if stream is not None:
            try:
                stream.close()
            except Exception as exc:  # closing must not fail the caller; keep it visible
                self._record_error(exc)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._close_client()
        with self._lock:
            if self._state in ("running", "paused"):
                self._state = "stopped"
            self._close_outage_locked()
            self._changed.notify_all()
        unregister(self)

    def pause(self) -> None:
        """Freeze :attr:`df` and the hooks; events keep arriving into the bounded buffer."""
        with self._lock:
            if self._state == "running":
                self._state = "paused"
                self._appended_at_pause = self._buffer.appended

    def resume(self) -> None:
        """Show what arrived while paused and carry on."""
        with self._lock:
            if self._state != "paused":
                return
            self._state = "running"
            held = self._publish_held_locked()
        if held is not None:
            self._call_hooks(held)

    def __enter__(self) -> LiveFrame:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def state(self) -> State:
        """``new``, ``running``, ``paused``, ``stopped`` (by :meth:`stop`),
        ``ended`` (the server ended the stream) or ``failed`` (see :attr:`error`)."""
        return self._state

    @property
    def running(self) -> bool:
        """Whether the consumer thread is alive."""
        t = self._thread
        return t is not None and t.is_alive()

    def wait_for(self, received: int, timeout: float | None = 10.0) -> bool:
        """Wait until at least ``received`` events have arrived; False on timeout or when the stream ended.

        While paused the events are counted but :attr:`df` shows them only after :meth:`resume`.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while self._received < received:
                if self._state not in ("running", "paused", "new"):
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True

    # ------------------------------------------------------------------ hooks
    def add_hook(self, hook: BatchHook) -> BatchHook:
        """Call ``hook(df)`` with each new batch from now on (returns it: usable as a decorator)."""
        if not callable(hook):
            raise UsageError(f"a hook must be callable, got {hook!r}")
        with self._lock:
            self._hooks = [*self._hooks, hook]
        return hook

    def remove_hook(self, hook: BatchHook) -> None:
        """Stop calling ``hook``."""
        with self._lock:
            self._hooks = [h for h in self._hooks if h is not hook]

    # ------------------------------------------------------------------ reading
    @property
    def version(self) -> int:
        """A counter that changes whenever :attr:`df` would (not while paused)."""
        return self._visible[0]

    @property
    def batches(self) -> tuple[pa.RecordBatch, ...]:
        """The Arrow record batches behind :attr:`df`, oldest first (zero-copy)."""
        return self._visible[1]

    @property
    def table(self) -> pa.Table:
        """The rows as one Arrow table (zero-copy)."""
        return pa.Table.from_batches(self._visible[1], schema=event_schema())

    @property
    def df(self) -> pd.DataFrame:
        """The rows as a DataFrame with the :data:`~theia_frames.frames.convert.EVENT_DTYPES`.

        Built only when the data changed since the last call; otherwise the
        cached frame is returned (as a shallow copy, so changing it does not
        change the cache).
        """
        version, batches = self._visible
        cache = self._df_cache
        if cache is None or cache[0] != version:
            from ..frames.convert import batches_to_dataframe

            # Built outside the lock: the consumer keeps appending meanwhile.
            frame = batches_to_dataframe(list(batches))
            cache = (version, frame)
            with self._lock:
                current = self._df_cache
                if current is None or current[0] < version:
                    self._df_cache = cache
        return cache[1].copy(deep=False)

    def __len__(self) -> int:
        return sum(b.num_rows for b in self._visible[1])

    def status(self) -> LiveStatus:
        """The state and counters now."""
        now = time.monotonic()
        with self._lock:
            self._drain_stream_errors_locked()
            while self._arrivals and self._arrivals[0][0] < now - _RATE_SPAN:
                self._arrivals.popleft()
            recent = sum(n for _, n in self._arrivals)
            span = min(_RATE_SPAN, now - self._started) if self._state != "new" else 0.0
            rate = recent / span if span > 0.05 else 0.0
            if self._state not in ("running", "paused"):
                rate = 0.0
            newest = self._buffer.newest
            last = self._errors[-1] if self._errors else None
            stream = self._stream
            gap = getattr(stream, "gap", None)
            phase, since, attempt, reason = self._phase_locked(stream, gap)
            return LiveStatus(
                state=self._state,
                phase=phase,
                since=since,
                attempt=attempt,
                reason=reason,
                received=self._received,
                rows=len(self),
                dropped=self._buffer.dropped,
                rate=rate,
                errors=self._error_count + self._stream_skipped,
                last_error=None if last is None else f"{type(last).__name__}: {last}",
                newest=newest,
                lag=None if newest is None else time.time() - newest,
                version=self.version,
                reconnects=getattr(stream, "reconnects", 0),
                gap_last=getattr(gap, "last", 0.0),
                gap_total=getattr(gap, "total", 0.0),
                recovered=getattr(stream, "recovered", 0),
            )

    def _phase_locked(self, stream: Any, gap: Any) -> tuple[Phase, float | None, int, str | None]:
        state = self._state
        if state == "new":
            return ("connecting" if self._connecting else "new"), None, 0, None
        if state == "failed":
            return "failed", None, 0, in_words(self.error)
        if state == "ended":
            return "ended", None, 0, None
        if state == "stopped":
            return "stopped", None, 0, None
        drop = self._drop
        away = stream is not None and not getattr(stream, "connected", True)
        if away:
            last = getattr(gap, "last", 0.0)
            cause, error, failed = drop if drop is not None else (getattr(stream, "last_error", None), None, 0)
            reason = in_words(error if failed else cause) or None
            return "reconnecting", time.time() - last, failed + 1, reason
        return ("paused" if state == "paused" else "live"), None, 0, None

    @property
    def outages(self) -> list[tuple[float, float | None]]:
        """The periods the connection to the collector was away, oldest first (at most 100):
        ``(start, end)`` in seconds since the epoch, ``end`` None while it is still away.

        The events stored meanwhile are fetched on return; a plot shades these periods.
        """
        with self._lock:
            return [(float(start), end) for start, end in self._outages]  # type: ignore[arg-type]

    def _close_outage_locked(self) -> None:
        if self._outages and self._outages[-1][1] is None:
            self._outages[-1][1] = time.time()

    @property
    def errors(self) -> list[BaseException]:
        """The most recent errors (at most 100): undecodable events, failed hooks, the stream's end."""
        with self._lock:
            self._drain_stream_errors_locked()
            return list(self._errors)

    def widget(self, plot: PlotFunction | None = None, every: DurationLike = 0.5, **options: Any) -> LiveView:
        """A live view of this frame: a status line, pause/resume and stop buttons, and a plot.

        See :class:`~theia_frames.live.widget.LiveView` (``plot(df, ax)`` replaces
        the default plot; the figure is redrawn at most every ``every`` seconds,
        only when the data changed). Outside Jupyter it is a text status.
        """
        return LiveView(self, plot=plot, every=every, **options)

    def __repr__(self) -> str:
        return f"<LiveFrame {self.url or ''} {self.status()}>"

    # ------------------------------------------------------------------ consumer
    def _open(self) -> Any:
        if self._client is None:
            from ..client import Client

            assert self.url is not None  # a frame that owns its client was made with a URL
            self._client = Client(self.url, **self._client_options)
        stream = self._client.receive(self.filter, **self._receive_options)
        self._started = time.monotonic()
        return stream

    def _close_client(self) -> None:
        client, self._client = (self._client, None) if self._owns_client else (None, self._client)
        if client is not None:
            try:
                client.close()
            except Exception as exc:
                self._record_error(exc)

    def _heartbeat(self) -> float | None:
        """Seconds between the empty batches a reconnecting stream yields while idle or away.

        Shorter than half the first backoff, so the consumer sees every failed
        attempt (a new ``last_error``) before the next one: the attempt count
        of the status is exact.
        """
        if not self._receive_options.get("reconnect"):
            return None
        from ..client import DEFAULT_BACKOFF

        backoff = self._receive_options.get("backoff", DEFAULT_BACKOFF)
        try:
            return min(0.25, 0.4 * float(backoff))
        except (TypeError, ValueError):
            return 0.25  # the stream refuses the value itself

    def _observe(self, stream: Any) -> None:
        """Follow the connection: a drop, each failed attempt to come back, the return."""
        if getattr(stream, "connected", True):
            reconnects = getattr(stream, "reconnects", 0)
            if self._drop is not None or reconnects != self._reconnects_seen:
                with self._lock:
                    if self._drop is None and reconnects != self._reconnects_seen:
                        # away and back between two looks: the stream says for how long
                        now = time.time()
                        away = float(getattr(getattr(stream, "gap", None), "last", 0.0) or 0.0)
                        self._outages.append([now - away, now])
                    self._drop = None
                    self._reconnects_seen = reconnects
                    self._close_outage_locked()
            return
        error = getattr(stream, "last_error", None)
        with self._lock:
            if self._drop is None:
                self._drop = (error, error, 0)
                away = getattr(getattr(stream, "gap", None), "last", 0.0) or 0.0
                self._outages.append([time.time() - float(away), None])
            elif error is not self._drop[1]:
                cause, _, failed = self._drop
                self._drop = (cause, error, failed + 1)

    def _run(self, stream: Any) -> None:
        heartbeat = self._heartbeat()
        try:
            batches = stream.iter_batches() if heartbeat is None else stream.iter_batches(heartbeat=heartbeat)
            for batch in batches:
                if self._stopping:
                    break
                if heartbeat is not None:
                    self._observe(stream)
                self._ingest(batch)
        except Exception as exc:  # a broken stream is reported in the status, not raised on a thread
            with self._lock:
                if not self._stopping:
                    self.error = exc
                    self._errors.append(exc)
                    self._error_count += 1
                    self._state = "failed"
                self._changed.notify_all()
        else:
            with self._lock:
                if not self._stopping and self._state in ("running", "paused"):
                    self._state = "ended"
                self._changed.notify_all()
        finally:
            with self._lock:
                self._drain_stream_errors_locked()
                if self._state in ("ended", "failed"):
                    self._close_outage_locked()
            if self._state in ("ended", "failed"):
                unregister(self)

    def _ingest(self, batch: Any) -> None:
        n = batch.num_rows
        if not n:
            return
        hooks: list[BatchHook] = []
        with self._lock:
            self._buffer.append(batch)
            self._received += n
            self._arrivals.append((time.monotonic(), n))
            if len(self._arrivals) > 4096:
                self._arrivals.popleft()
            if self._state != "paused":
                self._visible = (self._buffer.version, self._buffer.batches)
                hooks = self._hooks
            self._changed.notify_all()
        if hooks:
            self._call_hooks(batch, hooks)

    def _publish_held_locked(self) -> Any:
        """Make rows that arrived while paused visible; return those still held, as one batch."""
        self._visible = (self._buffer.version, self._buffer.batches)
        new = min(self._buffer.appended - self._appended_at_pause, self._buffer.rows)
        self._appended_at_pause = self._buffer.appended
        if new <= 0 or not self._hooks:
            return None
        batches = self._buffer.table().slice(self._buffer.rows - new).to_batches()
        return pa.concat_batches(batches) if batches else None

    def _call_hooks(self, batch: Any, hooks: list[BatchHook] | None = None) -> None:
        hooks = self._hooks if hooks is None else hooks
        if not hooks:
            return
        from ..frames.convert import batches_to_dataframe

        frame = batches_to_dataframe([batch])
        for hook in hooks:
            try:
                hook(frame.copy(deep=False))
            except Exception as exc:  # a user's hook must not end the stream
                self._record_error(exc)

    def _record_error(self, exc: BaseException) -> None:
        with self._lock:
            self._errors.append(exc)
            self._error_count += 1

    def _drain_stream_errors_locked(self) -> None:
        # undecodable events the client skipped in lenient mode: it keeps the
        # first few and counts all of them
        stream = self._stream
        if stream is None:
            return
        errs = getattr(stream, "errors", None) or []
        if len(errs) > self._stream_errors_seen:
            self._errors.extend(errs[self._stream_errors_seen :])
            self._stream_errors_seen = len(errs)
        self._stream_skipped = int(getattr(stream, "skipped", 0) or 0)


# --------------------------------------------------------------------------- the one-liner


def live_plot(
    client_or_url: Any,
    filter: EventFilter | Mapping[str, Any] | None = None,
    *,
    plot: PlotFunction | None = None,
    every: DurationLike = 0.5,
    max_rows: int | None = None,
    window: Any = None,
    mode: Mode = "auto",
    **options: Any,
) -> LiveView:
    """Subscribe to ``filter`` and return a live view of it (the one-liner).

    Starts a :class:`LiveFrame` (``max_rows=100_000`` unless ``max_rows`` or
    ``window`` is given, so memory stays bounded) and wraps it in a
    :class:`~theia_frames.live.widget.LiveView`; the view's Stop button stops
    the frame. The frame is ``view.live``. Show the view by making it the
    cell's result, or ``display(view)``. Other keyword arguments are
    :class:`~theia_frames.live.widget.LiveView`'s (``figsize``, ``title``, ...)
    or, given a URL, the :class:`~theia_frames.client.Client`'s (``timeout``,
    ``token``, ...), as for :class:`LiveFrame`.

    >>> view = live_plot("ws://127.0.0.1:6433", {"tags": ["sensor"]}, window="10min")  # doctest: +SKIP
    """
    if max_rows is None and window is None:
        max_rows = 100_000
    view_keys = view_options()
    view_kw = {k: v for k, v in options.items() if k in view_keys}
    client_kw = check_client_options("live_plot()", client_or_url, {k: v for k, v in options.items() if k not in view_keys})
    live = LiveFrame(client_or_url, filter, max_rows=max_rows, window=window, **client_kw)
    require_widget(mode, interactive=bool(view_kw.get("interactive")))  # before anything is subscribed
    live.start()
    try:
        return LiveView(live, plot=plot, every=every, mode=mode, stop_frame=True, **view_kw)
    except BaseException:
        live.stop()
        raise
