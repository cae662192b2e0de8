"""The collector's extensions for safety: flush acknowledgements, tokens, TLS, linear-time patterns."""

from __future__ import annotations

import json
import ssl
import time

import pytest
import websocket

from theia_frames import Event, Filter, serve
from theia_frames.protocol.arrow import SUBPROTOCOL, batch_to_ipc, events_to_batch
from theia_frames.protocol.codec import encode
from theia_frames.exceptions import UsageError

EXT = [f"Sec-WebSocket-Protocol: {SUBPROTOCOL}"]


def events(n, start=1_000.0):
    return [Event(id=f"e{i}", timestamp=start + i, source="/s", tags=["t"], content=f"{i}C") for i in range(n)]


def connect(url, path, header=(), **kw):
    ws = websocket.create_connection(url + path, header=list(header), timeout=10, **kw)
    return ws


def find_all(url, **kw):
    ws = connect(url, "/find", **kw)
    ws.send(json.dumps({"start": 1}))
    assert ws.recv() == "ok"
    got = []
    while True:
        opcode, data = ws.recv_data()
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            break
        got.append(data)
    ws.shutdown()
    return got


# ------------------------------------------------------------------ flush


def test_flush_is_answered_after_commit_with_counts(collector):
    ws = connect(collector.url, "/event", EXT)
    assert ws.getsubprotocol() is None or True  # websocket-client only reports what it asked for
    assert ws.getheaders().get("sec-websocket-protocol") == SUBPROTOCOL
    batch = events(5_000)
    ws.send_binary(batch_to_ipc(events_to_batch(batch)))
    ws.send_binary(b"not an event")
    ws.send_binary(encode(Event(id="last", timestamp=9_999.0)))
    ws.send(json.dumps({"flush": 7}))
    replies = [json.loads(ws.recv()) for _ in range(2)]
    ws.shutdown()
    error = next(r for r in replies if "error" in r)
    ack = next(r for r in replies if "flushed" in r)
    assert "invalid event" in error["error"]
    assert ack == {"flushed": 7, "stored": 5_001, "rejected": 1}
    # the acknowledgement means committed: a find sees every event right away
    assert len(find_all(collector.url)) == 5_001


def test_flush_with_nothing_sent_is_answered_at_once(collector):
    ws = connect(collector.url, "/event", EXT)
    ws.send(json.dumps({"flush": 1}))
    assert json.loads(ws.recv()) == {"flushed": 1, "stored": 0, "rejected": 0}
    ws.shutdown()


def test_plain_peers_never_see_flush_replies(collector):
    ws = connect(collector.url, "/event")
    ws.send(json.dumps({"flush": 1}))  # to a plain peer this is just a malformed event
    reply = json.loads(ws.recv())
    assert "error" in reply and "flushed" not in reply
    ws.shutdown()


# ------------------------------------------------------------------ token


def test_token_is_checked_at_the_handshake():
    with serve(db=":memory:", port=0, token="s3cret") as c:
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            connect(c.url, "/find")
        assert info.value.status_code == 401
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            connect(c.url, "/find", ["Authorization: Bearer wrong"])
        assert info.value.status_code == 403
        ok = connect(c.url, "/event", ["Authorization: Bearer s3cret", *EXT])
        ok.send_binary(encode(Event(id="a", timestamp=5.0)))
        # acknowledged once stored (c.flush() alone could run before the event is read)
        ok.send(json.dumps({"flush": 1}))
        assert json.loads(ok.recv()) == {"flushed": 1, "stored": 1, "rejected": 0}
        ok.shutdown()
        assert len(find_all(c.url, header=["Authorization: Bearer s3cret"])) == 1


def test_bad_access_options_are_refused(tmp_path):
    from theia_frames.server.collector import Collector

    with pytest.raises(UsageError, match="token"):
        Collector(token="")
    with pytest.raises(UsageError, match="certfile"):
        Collector(keyfile=tmp_path / "k.pem")
    with pytest.raises(UsageError, match="cannot load"):
        Collector(certfile=tmp_path / "missing.pem")


# ------------------------------------------------------------------ TLS


def test_tls(tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile, cafile = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(cafile))
    with serve(db=":memory:", port=0, certfile=certfile, keyfile=keyfile) as c:
        assert c.url.startswith("wss://127.0.0.1:")
        sslopt = {"ca_certs": str(cafile), "cert_reqs": ssl.CERT_REQUIRED}
        ws = connect(c.url, "/event", sslopt=sslopt)
        ws.send_binary(encode(Event(id="tls", timestamp=3.0)))
        ws.close()
        c.flush()
        assert len(find_all(c.url, sslopt=sslopt)) == 1
        # a client that does not trust the certificate is refused by TLS itself
        with pytest.raises(ssl.SSLError):
            connect(c.url, "/find", sslopt={"cert_reqs": ssl.CERT_REQUIRED})


# ------------------------------------------------------------------ patterns


@pytest.mark.parametrize("path", ["/find", "/live"])
def test_catastrophic_pattern_does_not_hang(collector, path):
    ws = connect(collector.url, "/event")
    ws.send_binary(encode(Event(id="evil", timestamp=2.0, content="a" * 50_000 + "!")))
    ws.shutdown()
    collector.flush()
    sub = connect(collector.url, path)
    t0 = time.monotonic()
    sub.send(json.dumps({"start": 1, "content": "(a+)+$"}))
    assert sub.recv() == "ok"
    if path == "/find":
        opcode, _ = sub.recv_data()
        assert opcode == websocket.ABNF.OPCODE_CLOSE  # no match, and a prompt answer
    else:
        pub = connect(collector.url, "/event")
        pub.send_binary(encode(Event(id="evil2", timestamp=3.0, content="a" * 50_000 + "!")))
        pub.send_binary(encode(Event(id="good", timestamp=4.0, content="aaaa")))
        pub.shutdown()
        data = sub.recv()
        assert b"id:good" in data
    sub.shutdown()
    assert time.monotonic() - t0 < 30  # a backtracking engine would take far longer than the test's life


def test_patterns_re2_cannot_run_are_refused_by_name(collector):
    ws = connect(collector.url, "/find")
    ws.send(json.dumps({"start": 1, "content": r"(a)\1"}))
    reply = json.loads(ws.recv())
    assert "RE2" in reply["error"] and repr(r"(a)\1") in reply["error"]
    ws.shutdown()


def test_filters_mean_the_same_under_re2(collector):
    ws = connect(collector.url, "/event")
    for e in [Event(id="1", timestamp=1.5, tags=["temp-1", "sensor"], content="21.5C"),
              Event(id="2", timestamp=2.5, tags=["temp"], content="x 22C y")]:
        ws.send_binary(encode(e))
    ws.shutdown()
    collector.flush()
    sub = connect(collector.url, "/find")
    sub.send(Filter(1).match_tag("temp.+").match_content(r"\dC").to_json())
    assert sub.recv() == "ok"
    first = sub.recv()
    assert b"id:1\n" in first
    opcode, _ = sub.recv_data()
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    sub.shutdown()
