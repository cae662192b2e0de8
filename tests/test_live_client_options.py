"""LiveFrame and live_plot take the Client's keyword arguments directly (``live/frame.check_client_options``)."""

from __future__ import annotations

import theia_frames as tf
import pytest

from theia_frames.event import Event
from theia_frames.exceptions import UsageError
from theia_frames.live.frame import LiveFrame, live_plot


def sample(n: int) -> list[Event]:
    return [Event(id=f"e{i}", timestamp=1_000.0 + i, source="/s", tags=["t"], content=str(i)) for i in range(n)]


def test_live_frame_takes_client_keywords_directly(collector):
    with LiveFrame(collector.url, {"start": 1}, timeout=5, batch=False) as live:
        assert live._client.timeout == 5 and live._client.batch is False
        tf.send(collector.url, sample(3), wait=True)
        assert live.wait_for(3, timeout=30)
        assert len(live.df) == 3


def test_an_unknown_keyword_of_live_frame_is_a_usage_error_naming_it():
    with pytest.raises(UsageError, match=r"LiveFrame\(\) got unexpected keyword argument\(s\) 'timout'.*Client keyword arguments: .*\btimeout\b"):
        LiveFrame("ws://127.0.0.1:1", timout=5)


def test_client_keywords_with_an_open_client_are_refused(collector):
    with tf.Client(collector.url) as client:
        with pytest.raises(UsageError, match="with a client already open"):
            LiveFrame(client, timeout=5)


def test_live_plot_takes_client_keywords_directly(collector):
    view = live_plot(collector.url, {"start": 1}, mode="text", timeout=6, title="t")
    try:
        assert view.live._client.timeout == 6
    finally:
        view.live.stop()
    with pytest.raises(UsageError, match=r"live_plot\(\) got unexpected keyword argument\(s\) 'colour'"):
        live_plot(collector.url, mode="text", colour="red")
