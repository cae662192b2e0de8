"""Live views: ``frame`` (:class:`~theia_frames.live.frame.LiveFrame`, a bounded DataFrame fed by a
live subscription), ``buffer`` (the events it holds), ``status`` (what it says about itself),
``registry`` (the frames running: ``live_frames``, ``stop_all``), ``widget`` (its widget and the
one-line ``live_plot``) and ``plotting`` (the default plot, drawn by :mod:`theia_frames.frames.plot`)."""

from .frame import LiveFrame, LiveStatus

__all__ = ["LiveFrame", "LiveStatus"]
