"""The reliability promises, scaled down: slow subscribers, acknowledged sends, hostile patterns and batches.

The full-size proofs are the scripts in ``scripts/`` (figures in
RELIABILITY.md); these tests run the same code on less data. The collector
runs in its own process (``theia-frames serve``) wherever the test kills it,
or where a failure could hang or crash it; deadlines below only detect a
hang, they measure nothing.
"""

from __future__ import annotations

import json

import psutil
import pytest

from theia_frames import Client, Event, EventFilter, serve
from theia_frames.protocol import codec
from theia_frames.protocol.arrow import batch_to_ipc, events_to_batch
from theia_frames.exceptions import UnconfirmedError
from scripts_loader import load_script

T0 = 1_700_000_000.0


fuzz_codec = load_script("fuzz_codec")
fuzz_collector = load_script("fuzz_collector")
proof_slow_subscriber = load_script("proof_slow_subscriber")
proof_flush_kill = load_script("proof_flush_kill")

CollectorProcess = fuzz_collector.CollectorProcess
RawSocket = fuzz_collector.RawSocket
wait_until = fuzz_collector.wait_until


def _flush(conn: RawSocket, token: int = 1) -> list[str | bytes]:
    """Ask for a flush on a negotiated /event connection; every message up to the answer."""
    conn.send(json.dumps({"flush": token}))
    answers = []
    while not (answers and isinstance(answers[-1], str) and answers[-1].startswith('{"flushed"')):
        answers.append(conn.recv(30))
    return answers


def _found(url: str, *, batch: bool = True) -> dict[str, Event]:
    with Client(url, batch=batch) as client:
        return {e.id: e for e in client.find(EventFilter())}


# --------------------------------------------------------------------------- a slow subscriber cannot hurt the others


def test_a_stalled_subscriber_is_dropped_and_the_others_get_everything(tmp_path):
    # Each message is confirmed before the next, so each is a commit of its own on any machine.
    result = proof_slow_subscriber.run(
        subscribers=10, stalled=1, rate=0, events=20_000, live_queue=500, plain_readers=2, content_size=1000,
        confirm_each=True, wake="drop", rss_bound_mb=600, workdir=str(tmp_path),
    )
    assert result.problems == [], result.format()
    assert result.readers_complete == 9
    assert result.stored == 20_000
    assert result.flush_confirmed == 20_000
    assert result.drops_logged == 1
    [(events, error, end)] = result.stalled_found
    # what was already on its way, then the collector's notice and 1013
    assert 0 < events < 20_000
    assert "subscriber too slow" in error
    assert end == "close code 1013"


def _stalled_subscriber(port: int) -> RawSocket:
    conn = RawSocket(port, "/live", rcvbuf=4096)
    conn.send("{}")
    assert conn.recv(30) == "ok"
    return conn


def _drop_line(conn: RawSocket) -> str:
    return f"dropping live subscriber 127.0.0.1:{conn.sock.getsockname()[1]}"


def test_a_stalled_subscriber_is_dropped_when_one_bulk_send_exceeds_its_bound(tmp_path):
    with CollectorProcess(tmp_path / "bulk.db", options=["--live-queue", "500", "--log-level", "warning"]) as proc:
        stalled = _stalled_subscriber(proc.port)
        bulk = [Event(id=f"b{i}", timestamp=T0 + i / 1000, content="x" * 1000) for i in range(7_000)]
        with RawSocket(proc.port, "/event", offer=True) as conn:
            conn.send(batch_to_ipc(events_to_batch(bulk)))  # one message, so one commit
            _flush(conn, 1)
            conn.send(codec.encode(Event(id="after", timestamp=T0 + 10, content="y")))
            _flush(conn, 2)
        try:
            wait_until(lambda: _drop_line(stalled) in proc.log_text(), 10, "the stalled subscriber to be dropped")
        finally:
            stalled.drop()


def _stall_until_dropped(proc: CollectorProcess) -> RawSocket:
    """A subscriber that never reads, fed until the collector drops it (each message a commit of its own)."""
    stalled = _stalled_subscriber(proc.port)
    with Client(proc.url) as client:
        k = 0
        while _drop_line(stalled) not in proc.log_text():
            assert k < 200, "the stalled subscriber was never dropped"
            client.send_many([Event(id=f"s{k}-{i}", timestamp=T0 + k + i / 1000, content="x" * 1000)
                              for i in range(200)], wait=True)
            k += 1
    return stalled


def test_a_dropped_subscriber_that_never_reads_is_disconnected(tmp_path):
    with CollectorProcess(tmp_path / "never.db", options=["--live-queue", "200", "--log-level", "warning"]) as proc:
        stalled = _stall_until_dropped(proc)
        port = stalled.sock.getsockname()[1]

        def collector_side_gone() -> bool:
            return not any(c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
                           for c in psutil.Process(proc.pid).net_connections())

        # the collector gives a dropped subscriber 10 s to take the notice, then cuts it off
        try:
            wait_until(collector_side_gone, 60, "the collector to end the stalled connection")
        finally:
            stalled.drop()
        assert "cutting off live subscriber" in proc.log_text()


# --------------------------------------------------------------------------- acknowledged sends


def test_what_flush_confirmed_survives_sigkill(tmp_path):
    result = proof_flush_kill.run(events=5_000, extra=1_000, rounds=2, workdir=str(tmp_path))
    assert result.problems == [], result.format()
    assert [r.confirmed for r in result.rounds] == [5_000, 5_000]
    assert [r.found_confirmed for r in result.rounds] == [5_000, 5_000]
    assert all(r.changed == 0 for r in result.rounds)
    assert result.rounds[-1].stored_after_restart >= 10_000
    assert result.integrity == "ok"


def test_flush_on_a_plain_connection_says_it_cannot_confirm():
    with serve(db=":memory:", port=0) as collector, Client(collector.url, batch=False) as client:
        assert client.flush() == 0  # nothing sent yet: nothing to confirm
        client.send(Event(id="p1", timestamp=T0, content="x"))
        with pytest.raises(UnconfirmedError):
            client.flush()


def test_flush_confirms_only_what_was_stored_and_counts_what_was_refused(tmp_path):
    with CollectorProcess(tmp_path / "refused.db", options=["--log-level", "error"]) as proc:
        with RawSocket(proc.port, "/event", offer=True) as conn:
            assert conn.subprotocol == "theia-frames.v2"
            conn.send(codec.encode(Event(id="g1", timestamp=T0, content="good")))
            conn.send(b"event: 3 2 1\nnot an event")
            conn.send(codec.encode(Event(id="g2", timestamp=T0 + 1, content="good")))
            answers = _flush(conn, 7)
        flushed = json.loads(answers[-1])
        assert flushed == {"flushed": 7, "stored": 2, "rejected": 1}
        assert any("error" in json.loads(a) for a in answers[:-1])
        assert set(_found(proc.url)) == {"g1", "g2"}


# --------------------------------------------------------------------------- hostile input


def test_a_catastrophic_pattern_does_not_hang_the_collector(tmp_path):
    long = "a" * 50_000 + "!"
    with CollectorProcess(tmp_path / "redos.db", options=["--log-level", "warning"]) as proc:
        with Client(proc.url) as client:
            client.send_many([Event(id="long1", timestamp=T0, content=long),
                              Event(id="match1", timestamp=T0 + 1, content="bbbaaa")], wait=True)
        # /find: the pattern runs against the long content; "found anywhere" keeps its meaning
        with RawSocket(proc.port, "/find") as find:
            find.send(json.dumps({"start": 1, "content": "(a+)+$"}))
            messages, code = find.recv_until_close(60)
        assert messages[0] == "ok" and code == 1000
        assert [codec.decode(m).id for m in messages[1:]] == ["match1"]
        # /live: every stored event passes the pattern as it is published
        with RawSocket(proc.port, "/live") as live:
            live.send(json.dumps({"content": "(a+)+$"}))
            assert live.recv(60) == "ok"
            with Client(proc.url) as client:
                client.send_many([Event(id="long2", timestamp=T0 + 2, content=long),
                                  Event(id="match2", timestamp=T0 + 3, content="xaaaa")], wait=True)
            assert codec.decode(live.recv(60)).id == "match2"
            # tags and ids are matched in full, with the same engine
            with RawSocket(proc.port, "/find") as find:
                find.send(json.dumps({"start": 1, "id": "(l|o|n|g|1|2)+$", "tags": []}))
                messages, code = find.recv_until_close(60)
            assert code == 1000 and sorted(codec.decode(m).id for m in messages[1:]) == ["long1", "long2"]
        assert proc.alive
        assert set(_found(proc.url)) == {"long1", "match1", "long2", "match2"}


def test_a_pattern_the_linear_engine_cannot_run_is_refused_by_name(tmp_path):
    with serve(db=":memory:", port=0) as collector:
        for path in ("/find", "/live"):
            with RawSocket(collector.port, path) as conn:
                conn.send(json.dumps({"start": 1, "content": "(a)\\1"}))
                messages, code = conn.recv_until_close(30)
            assert code == 1008
            error = json.loads(messages[0])["error"]
            assert "(a)" in error and "engine" in error


def test_a_batch_with_offsets_past_its_data_is_refused(tmp_path):
    with CollectorProcess(tmp_path / "offsets.db", options=["--log-level", "warning"]) as proc:
        with RawSocket(proc.port, "/event", offer=True) as conn:
            conn.send(fuzz_codec.bad_offsets_message())
            conn.send(codec.encode(Event(id="after", timestamp=T0, content="valid")))
            answers = _flush(conn)
        # Only a plain /find here: a batched one would hand the damaged batch to this process.
        found = _found(proc.url, batch=False)
        assert proc.alive
        assert set(found) == {"after"}
        assert "error" in json.loads(answers[0])
        assert json.loads(answers[-1]) == {"flushed": 1, "stored": 1, "rejected": 1}


@pytest.mark.parametrize("batched_find", [True, False])
def test_a_batch_that_is_not_utf8_does_not_poison_the_store(tmp_path, batched_find):
    with CollectorProcess(tmp_path / "utf8.db", options=["--log-level", "warning"]) as proc:
        with Client(proc.url) as client:
            client.send(Event(id="before", timestamp=T0, content="valid"), wait=True)
        with RawSocket(proc.port, "/event", offer=True) as conn:
            conn.send(fuzz_codec.not_utf8_message())
            answers = _flush(conn)
        with Client(proc.url) as client:
            client.send(Event(id="after", timestamp=T0 + 1, content="valid"), wait=True)
        assert set(_found(proc.url, batch=batched_find)) == {"before", "after"}
        assert "error" in json.loads(answers[0])
