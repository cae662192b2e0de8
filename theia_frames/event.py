"""The event: one entry of the theia log."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

__all__ = ["Event", "new_event_id"]


def new_event_id() -> str:
    """A new random event id (a UUID4 string), as the Go client makes them.

    >>> len(new_event_id())
    36
    """
    return str(uuid.uuid4())


@dataclass(slots=True)
class Event:
    """One event: id, timestamp (float seconds since the epoch, UTC), source, tags, content.

    ``id`` and ``timestamp`` default to a new UUID4 and the current time.

    >>> e = Event(source="/dev/sensors/temp", tags=["sensor", "temp"], content="21.5C")
    >>> e.source, e.tags, e.content
    ('/dev/sensors/temp', ['sensor', 'temp'], '21.5C')
    >>> Event(id="a", timestamp=1.5).timestamp
    1.5
    """

    id: str = field(default_factory=new_event_id)
    timestamp: float = field(default_factory=time.time)
    source: str = ""
    tags: list[str] = field(default_factory=list)
    content: str = ""
