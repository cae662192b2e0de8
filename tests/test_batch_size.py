"""Rows per batch is ``batch_size`` everywhere: the collector, ``serve``, the serve command and the clients."""

from __future__ import annotations

import pytest

import theia_frames as tf
from theia_frames.cli import build_parser, main
from theia_frames.server.collector import DEFAULT_FIND_BATCH, DEFAULT_PORT, Collector, serve
from theia_frames.event import Event
from theia_frames.exceptions import TheiaError, UsageError
from theia_frames.filter import Filter


def sample(n: int) -> list[Event]:
    return [Event(id=f"e{i}", timestamp=1_000.0 + i, source="/s", tags=["t"], content=str(i)) for i in range(n)]


def test_collector_and_serve_take_batch_size():
    assert Collector(batch_size=7).batch_size == 7
    assert Collector().batch_size == DEFAULT_FIND_BATCH
    with pytest.raises(UsageError, match="batch_size must be a positive whole number"):
        Collector(batch_size=0)
    with serve(db=":memory:", port=0, batch_size=11) as running:
        assert running.batch_size == 11
        with tf.Client(running.url) as client:
            client.send_many(sample(30), wait=True)
            assert len(list(client.find(Filter(1)))) == 30


def test_serve_has_the_port_default_of_collector(monkeypatch):
    import inspect

    assert inspect.signature(serve).parameters["port"].default == DEFAULT_PORT == 6433
    assert inspect.signature(Collector).parameters["port"].default == DEFAULT_PORT
    seen = {}

    def start(self):
        seen["port"] = self._requested_port
        return self

    monkeypatch.setattr(Collector, "start", start)
    serve(db=":memory:")
    assert seen["port"] == 6433


def test_the_serve_command_takes_batch_size(monkeypatch):
    assert build_parser().parse_args(["serve", "--db", ":memory:"]).batch_size == DEFAULT_FIND_BATCH
    assert build_parser().parse_args(["serve", "--db", ":memory:", "--batch-size", "7"]).batch_size == 7
    given = {}

    def fake_serve(**options):
        given.update(options)
        raise TheiaError("not serving in this test")

    monkeypatch.setattr("theia_frames.server.collector.serve", fake_serve)
    assert main(["serve", "--db", ":memory:", "--batch-size", "7"]) == 1
    assert given["batch_size"] == 7
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--db", ":memory:", "--batch-size", "0"])


@pytest.mark.parametrize("make", [tf.Client, tf.AsyncClient])
def test_the_clients_batch_size_defaults_to_10_000(make):
    assert make("ws://127.0.0.1:1").batch_size == 10_000


def test_a_send_goes_out_in_arrow_messages_of_batch_size_events():
    from theia_frames.protocol.arrow import ipc_to_batches
    from theia_frames.testing import MockServer

    with MockServer(batch=True) as mock:
        with tf.Client(mock.url, batch_size=300) as client:
            client.send_many([Event(id=f"e{i}", timestamp=1.0 + i) for i in range(1000)], wait=True)
        sizes = [b.num_rows for r in mock.received if r.path == "/event" and isinstance(r.message, bytes)
                 for b in ipc_to_batches(r.message)]
    assert sizes == [300, 300, 300, 100]
