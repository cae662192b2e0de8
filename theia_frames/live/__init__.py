"""Live views: ``frame`` (:class:`~theia_frames.live.frame.LiveFrame`, a bounded DataFrame fed by a
live subscription), ``buffer`` (the events it holds), ``status`` (what it says about itself),
``widget`` (its widget and the one-line ``live_plot``) and ``plotting`` (the default plot)."""

from .frame import LiveFrame, LiveStatus

__all__ = ["LiveFrame", "LiveStatus"]
