"""The live frames running in this process: :func:`live_frames`, :func:`stop_all`, and the cell rule.

Every :class:`~theia_frames.live.frame.LiveFrame` that starts is registered
here until it stops, ends or fails, so a frame whose widget was lost (a page
reload, a variable overwritten) can still be found and stopped.

In a Jupyter kernel a frame remembers the notebook cell that made it (the
``cellId`` JupyterLab and Notebook 7 send with each execution) and the
execution. Starting a frame from a later run of the same cell stops the
frames an earlier run of it started: re-running a cell replaces its live
view instead of leaving the old one running unseen. Frames made by the same
run of a cell (two in one cell) leave each other alone. Where the frontend
sends no cell id (the classic notebook, VS Code without it, scripts) nothing
is replaced.

    >>> live_frames()
    []
    >>> stop_all()
    0
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["live_frames", "stop_all", "current_cell", "register", "unregister", "RunningFrame"]


class RunningFrame(Protocol):
    """What the registry needs of a :class:`~theia_frames.live.frame.LiveFrame`
    (which imports this module, so it is named here only by what it offers)."""

    @property
    def state(self) -> str: ...

    def stop(self, timeout: float | None = 5.0) -> None: ...


_lock = threading.Lock()
# id(frame) -> (frame, (cell id, execution id) or None); in start order
_running: dict[int, tuple[RunningFrame, tuple[str, str] | None]] = {}


def current_cell() -> tuple[str, str] | None:
    """The notebook cell running now and its execution, as ``(cell id, message id)``; None outside one.

    Read from the kernel's current request (``parent_header``): its
    ``metadata.cellId``, sent by JupyterLab and Notebook 7, and its ``msg_id``.

    >>> current_cell() is None  # not in a kernel
    True
    """
    try:
        from IPython.core import getipython
    except ImportError:
        return None
    find_shell: Callable[[], Any] = getipython.get_ipython  # untyped in IPython
    shell = find_shell()
    if shell is None or getattr(shell, "kernel", None) is None:
        return None
    header: Any = getattr(shell, "parent_header", None) or {}
    metadata = header.get("metadata") or {}
    cell = metadata.get("cellId") if isinstance(metadata, dict) else None
    msg_id = (header.get("header") or {}).get("msg_id")
    if not cell or not msg_id:
        return None
    return str(cell), str(msg_id)


def register(frame: RunningFrame, cell: tuple[str, str] | None) -> list[RunningFrame]:
    """Record a frame that started; returns the frames an earlier run of its cell started (to be stopped)."""
    with _lock:
        replaced = []
        if cell is not None:
            replaced = [f for f, c in _running.values() if c is not None and c[0] == cell[0] and c[1] != cell[1]]
        _running[id(frame)] = (frame, cell)
    return replaced


def unregister(frame: RunningFrame) -> None:
    """Forget a frame (it stopped)."""
    with _lock:
        _running.pop(id(frame), None)


def live_frames() -> list[RunningFrame]:
    """The frames running now (running or paused, not stopped, ended or failed), oldest first.

    >>> isinstance(live_frames(), list)
    True
    """
    with _lock:
        frames = [f for f, _ in _running.values()]
    alive = [f for f in frames if f.state in ("running", "paused")]
    if len(alive) != len(frames):
        with _lock:
            for f in frames:
                if f not in alive:
                    _running.pop(id(f), None)
    return alive


def stop_all(timeout: float | None = 5.0) -> int:
    """Stop every running frame (their widgets stop with them); returns how many were stopped."""
    frames = live_frames()
    for frame in frames:
        frame.stop(timeout)
    return len(frames)
