"""Events for tests that need a few of them: ids, times 1 ms apart, three sources, two tags."""

from __future__ import annotations

from theia_frames.event import Event

BASE = 1_700_000_000.0


def make_events(n: int, *, start: float = BASE, step: float = 0.001, prefix: str = "e") -> list[Event]:
    return [
        Event(
            id=f"{prefix}{i}",
            timestamp=start + i * step,
            source=f"/dev/sensors/s-{i % 3}",
            tags=["sensor", f"k{i % 2}"],
            content=f"{i}.5C",
        )
        for i in range(n)
    ]
