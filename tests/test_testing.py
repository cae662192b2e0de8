"""The testing kit: MockServer, driven by a plain WebSocket client and by our Client."""

from __future__ import annotations

import importlib.metadata
import json
import re
import socket
import struct
import threading

import pytest
import websocket
from hypothesis import given, settings
from hypothesis import strategies as st

from theia_frames import Event, Filter, TheiaTimeoutError, UsageError
from theia_frames.protocol.arrow import SUBPROTOCOL, batch_to_ipc, events_to_batch, ipc_to_batches, iter_batch_events
from theia_frames.protocol.codec import decode, encode
from theia_frames.protocol.messages import ErrorMessage
from theia_frames.client import Client
from theia_frames.exceptions import (
    AuthenticationError,
    ConnectError,
    ConnectionClosed,
    ServerError,
    TransportError,
)
from theia_frames.testing.mock import MockExpectationError, MockServer, Received, event_like

pytest_plugins = ["pytester"]

EV1 = Event(id="e1", timestamp=1550710745.5, source="/dev/sensors/temp-1", tags=["sensor", "temp"], content="21.5C")
EV2 = Event(id="e2", timestamp=1550710746.25, source="/dev/sensors/temp-2", tags=["sensor"], content="45.2%")

# The Go client's dialect of EV1: no spaces after colons, 6 decimals, no trailing newline.
_GO_HEADER = b"id:e1\ntimestamp:1550710745.500000\nsource:/dev/sensors/temp-1\ntags:sensor,temp\n"
GO_EV1 = b"event:%d %d 5\n" % (len(_GO_HEADER) + 5, len(_GO_HEADER)) + _GO_HEADER + b"21.5C"


@pytest.fixture
def mock():
    server = MockServer()
    yield server
    server.terminate()


def connect(mock: MockServer, path: str, **kw) -> websocket.WebSocket:
    return websocket.create_connection(mock.url + path, timeout=5, **kw)


def recv_all(ws: websocket.WebSocket) -> tuple[list[tuple[int, bytes]], int | None]:
    """Every data frame until the connection closes, and the close code (None: dropped)."""
    frames = []
    while True:
        try:
            opcode, frame = ws.recv_data_frame(control_frame=True)
        except (websocket.WebSocketConnectionClosedException, ConnectionResetError):
            return frames, None
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            code = struct.unpack("!H", frame.data[:2])[0] if len(frame.data) >= 2 else 1005
            ws.shutdown()  # our close reply went out; end TCP too, as a real client does
            return frames, code
        frames.append((opcode, frame.data))


TEXT, BINARY = websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY


# --------------------------------------------------------------------------- basics


def test_url_is_a_free_loopback_port_and_context_manager_stops_it():
    with MockServer() as mock:
        assert re.fullmatch(r"ws://127\.0\.0\.1:\d+", mock.url)
        assert mock.url.endswith(f":{mock.port}")
        assert repr(mock) == f"<MockServer {mock.url}>"
        connect(mock, "/event").close()
        assert mock.connections == 1
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", mock.port), timeout=2).close()


def test_terminate_is_idempotent_and_push_after_it_is_misuse(mock):
    mock.terminate()
    mock.terminate()
    with pytest.raises(UsageError):
        mock.push("ok")


def test_a_busy_port_is_a_transport_error():
    with MockServer() as first, pytest.raises(TransportError, match="could not listen"):
        MockServer(port=first.port)


def test_received_records_path_and_message_in_order(mock):
    ws = connect(mock, "/event?x=1")
    ws.send("hello")
    ws.send_binary(b"\x00\x01")
    mock.wait_requests(2)
    ws.close()
    assert mock.received == [Received("/event", "hello"), Received("/event", b"\x00\x01")]
    assert mock.received[0].path == "/event"
    assert mock.handled == 2


# --------------------------------------------------------------------------- expectations


def test_expectations_met_in_order_pass(mock):
    mock.expect("a", b"b", path="/event")
    ws = connect(mock, "/event")
    ws.send("a")
    ws.send_binary(b"b")
    mock.verify()
    ws.close()


def test_text_and_bytes_compare_whatever_the_frame_type(mock):
    mock.expect(b"abc", "xyz")
    ws = connect(mock, "/event")
    ws.send("abc")
    ws.send_binary(b"xyz")
    mock.verify()
    ws.close()


def test_a_different_message_fails_showing_expected_and_received(mock):
    mock.expect(Filter(10), path="/find")
    ws = connect(mock, "/find")
    ws.send('{"start": 1e-06}')
    with pytest.raises(MockExpectationError) as info:
        mock.verify()
    text = str(info.value)
    assert "unexpected message on /find" in text
    assert 'expected: filter {"start": 10.0}' in text
    assert "received: '{\"start\": 1e-06}'" in text
    assert isinstance(info.value, AssertionError)
    # each problem is reported once
    mock.verify()
    ws.close()


def test_a_message_that_never_comes_fails_naming_what_was_received(mock):
    mock.expect(EV2, path="/event")
    with pytest.raises(MockExpectationError, match=r"never arrived on /event.*\n.*expected: Event\(id='e2'") as info:
        mock.verify(timeout=0.05)
    assert "received on /event: nothing" in str(info.value)

    mock.expect("x", path="/find")
    ws = connect(mock, "/live")
    ws.send("x")
    mock.wait_requests(1)
    with pytest.raises(MockExpectationError, match="received on /find: nothing"):
        mock.verify(timeout=0.05)
    ws.close()


def test_unmet_expectation_lists_the_last_messages_received_on_its_path(mock):
    mock.expect("a", path="/event").expect("never", path="/event")
    ws = connect(mock, "/event")
    ws.send("a")
    mock.wait_requests(1)
    with pytest.raises(MockExpectationError, match=r"1 message\(s\), the last:\n    /event: 'a'"):
        mock.verify(timeout=0.05)
    ws.close()


def test_verify_waits_for_messages_still_in_flight(mock):
    mock.expect(*(f"m{i}" for i in range(50)), path="/event")
    ws = connect(mock, "/event")
    for i in range(50):
        ws.send(f"m{i}")
    mock.verify()  # no wait_requests first: verify itself waits
    ws.close()


def test_context_manager_verifies_on_a_clean_exit():
    with pytest.raises(MockExpectationError, match=r"never arrived on any path \(waited 0.05 s\)"):
        with MockServer(timeout=0.05) as mock:
            mock.expect("x")


def test_context_manager_keeps_the_error_of_the_block():
    with pytest.raises(KeyError):
        with MockServer() as mock:
            mock.expect("never")
            raise KeyError("boom")


def test_expect_an_event_matches_either_dialect(mock):
    mock.expect(EV1, EV1, path="/event")
    ws = connect(mock, "/event")
    ws.send_binary(encode(EV1))
    ws.send(GO_EV1.decode())
    mock.verify()
    ws.close()


def test_expect_an_event_fails_on_another_event(mock):
    mock.expect(EV1, path="/event")
    ws = connect(mock, "/event")
    ws.send_binary(encode(EV2))
    with pytest.raises(MockExpectationError, match=r"received: Event\(id='e2'.*\(encoded\)"):
        mock.verify()
    ws.close()


def test_expect_a_filter_in_the_form_each_endpoint_gets(mock):
    f = Filter(10.5).match_tag("sensor").order_asc()
    mock.expect(f, path="/find").expect(f, path="/live").expect(Filter(), path="/find")
    find = connect(mock, "/find")
    find.send(json.dumps(f.for_find()))
    live = connect(mock, "/live")
    live.send(json.dumps({"start": 10, "tags": ["sensor"]}))
    find2 = connect(mock, "/find")
    find2.send(json.dumps(Filter().for_find()))  # no start: the earliest accepted event time
    mock.verify()
    for ws in (find, live, find2):
        ws.close()


def test_expect_a_dict_compares_json_not_text(mock):
    mock.expect({"start": 10, "tags": ["a"]}, path="/find")
    ws = connect(mock, "/find")
    ws.send('{ "tags" : ["a"],\n "start": 10.0 }')
    mock.verify()
    ws.close()


def test_expect_a_predicate_and_event_like(mock):
    mock.expect(lambda m: m.startswith("{"), path="/find")
    mock.expect(event_like(source="/dev/sensors/temp-1", content=re.compile(r"[\d.]+C")), path="/event")
    find = connect(mock, "/find")
    find.send('{"start": 1}')
    ev = connect(mock, "/event")
    ev.send_binary(encode(Event(source="/dev/sensors/temp-1", content="19.0C")))
    mock.verify()
    find.close()
    ev.close()


def test_a_failing_predicate_is_recorded_and_reported(mock):
    def boom(message):
        raise RuntimeError("predicate exploded")

    mock.expect(boom)
    ws = connect(mock, "/event")
    ws.send("x")
    with pytest.raises(MockExpectationError, match="predicate exploded") as info:
        mock.verify()
    assert "expected: test_a_failing_predicate_is_recorded_and_reported.<locals>.boom" in str(info.value)
    ws.close()


def test_expectations_per_path_do_not_interfere(mock):
    mock.expect("f", path="/find").expect("e", path="/event")
    event = connect(mock, "/event")
    event.send("e")
    find = connect(mock, "/find")
    find.send("f")
    mock.verify()
    event.close()
    find.close()


def test_expect_rejects_what_it_cannot_compare(mock):
    with pytest.raises(UsageError, match="cannot expect a int"):
        mock.expect(5)
    with pytest.raises(UsageError, match="at least one"):
        mock.expect()
    with pytest.raises(UsageError, match="unknown event field"):
        event_like(colour="red")


@settings(max_examples=60, deadline=None)
@given(
    st.builds(
        Event,
        id=st.uuids().map(str),
        timestamp=st.floats(0, 4e9, allow_nan=False),
        source=st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=20),
        tags=st.lists(
            st.text(st.characters(codec="utf-8", exclude_characters=",\r\n"), min_size=1, max_size=8), max_size=4
        ),
        content=st.text(st.characters(codec="utf-8"), max_size=60),
    )
)
def test_event_like_matches_an_events_own_fields(event):
    data = encode(event)
    assert event_like(id=event.id, source=event.source, tags=event.tags, content=event.content)(data)
    assert event_like(timestamp=event.timestamp)(data)
    assert not event_like(content=event.content + "x")(data)


# --------------------------------------------------------------------------- responses


def test_respond_after_the_first_message_with_each_kind(mock):
    mock.respond("ok", EV1, {"error": "bad"}, ErrorMessage("worse"), b"\x00raw", path="/find")
    ws = connect(mock, "/find")
    ws.settimeout(0.2)
    with pytest.raises(websocket.WebSocketTimeoutException):
        ws.recv()  # nothing before the first message
    ws.settimeout(5)
    ws.send('{"start": 1}')
    frames = [ws.recv_data() for _ in range(5)]
    assert frames == [
        (TEXT, b"ok"),
        (BINARY, encode(EV1)),
        (TEXT, b'{"error": "bad"}'),
        (TEXT, b'{"error": "worse"}'),
        (BINARY, b"\x00raw"),
    ]
    ws.send('{"start": 2}')  # later messages get no script
    mock.wait_requests(2)
    ws.close()


def test_respond_rejects_what_it_cannot_send(mock):
    with pytest.raises(UsageError, match="cannot send a float"):
        mock.respond(1.5)


def test_on_find_answers_ok_events_and_closes_normally(mock):
    mock.on_find([EV1, EV2])
    ws = connect(mock, "/find")
    ws.send('{"start": 1}')
    frames, code = recv_all(ws)
    assert frames == [(TEXT, b"ok"), (BINARY, encode(EV1)), (BINARY, encode(EV2))]
    assert code == 1000


def test_on_live_answers_and_stays_open_and_push_sends_more(mock):
    mock.on_live([EV1])
    ws = connect(mock, "/live")
    ws.send('{"start": 1}')
    assert ws.recv() == "ok"
    assert decode(ws.recv()) == EV1
    mock.wait_requests(1)
    assert mock.push(EV2) == 1
    assert mock.push(EV2, path="/find") == 0
    assert decode(ws.recv()) == EV2
    # terminate() waits for the close handshake, so read while it runs
    stopper = threading.Thread(target=mock.terminate)
    stopper.start()
    frames, code = recv_all(ws)
    stopper.join()
    assert frames == [] and code == 1001


def test_unscripted_paths_use_the_default_script(mock):
    mock.respond("default").respond("live", path="/live")
    a = connect(mock, "/event")
    a.send("x")
    b = connect(mock, "/live")
    b.send("x")
    assert (a.recv(), b.recv()) == ("default", "live")
    a.close()
    b.close()


def test_closing_steps_end_a_connections_script_and_the_last_one_repeats(mock):
    mock.on_find([EV1]).on_find([EV2])
    answers = []
    for _ in range(3):
        ws = connect(mock, "/find")
        ws.send('{"start": 1}')
        frames, code = recv_all(ws)
        answers.append([decode(data).id for op, data in frames if op == BINARY])
        assert code == 1000
    assert answers == [["e1"], ["e2"], ["e2"]]


def test_next_connection_separates_open_ended_scripts(mock):
    mock.respond("first", path="/live").next_connection(path="/live").respond("second", path="/live")
    one = connect(mock, "/live")
    one.send("x")
    two = connect(mock, "/live")
    two.send("x")
    assert (one.recv(), two.recv()) == ("first", "second")
    one.close()
    two.close()


# --------------------------------------------------------------------------- injected failures


def test_close_abruptly_delivers_what_was_sent_then_drops_without_a_close_frame(mock):
    mock.respond("ok", EV1, path="/find").close_abruptly(path="/find")
    ws = connect(mock, "/find")
    ws.send('{"start": 1}')
    frames, code = recv_all(ws)
    assert frames == [(TEXT, b"ok"), (BINARY, encode(EV1))]
    assert code is None


def test_close_with_a_code_and_reason(mock):
    mock.close_with(4000, "go away", path="/live")
    ws = connect(mock, "/live")
    ws.send('{"start": 1}')
    opcode, frame = ws.recv_data_frame(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert frame.data == struct.pack("!H", 4000) + b"go away"
    ws.shutdown()


def test_close_with_refuses_codes_that_cannot_be_sent(mock):
    for code in (999, 1005, 1006, 1015, 5000):
        with pytest.raises(UsageError, match=f"close code {code}"):
            mock.close_with(code)


def test_stall_stops_answering_and_terminate_still_ends_quickly(mock):
    mock.respond("ok", path="/find").stall(path="/find")
    ws = connect(mock, "/find")
    ws.send('{"start": 1}')
    assert ws.recv() == "ok"
    ws.settimeout(0.2)
    with pytest.raises(websocket.WebSocketTimeoutException):
        ws.recv()
    ws.settimeout(5)
    ws.send("ignored")  # not read while stalled
    mock.terminate()
    frames, code = recv_all(ws)
    assert frames == [] and code is None
    assert mock.received == [Received("/find", '{"start": 1}')]


def test_reject_refuses_the_handshake_with_a_status(mock):
    mock.reject(401, "who are you?", path="/event").respond("hi", path="/event")
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        connect(mock, "/event")
    assert info.value.status_code == 401
    assert mock.connections == 0
    ws = connect(mock, "/event")  # the next connection takes the next script
    ws.send("x")
    assert ws.recv() == "hi"
    ws.close()
    with pytest.raises(UsageError):
        mock.reject(200)


# --------------------------------------------------------------------------- handlers, errors, waiting


def test_handle_replies_with_its_return_value(mock):
    mock.handle(lambda m: None if m == "quiet" else [f"echo {m}", {"n": 1}], path="/event")
    ws = connect(mock, "/event")
    ws.send("quiet")
    ws.send("hi")
    assert ws.recv() == "echo hi"
    assert json.loads(ws.recv()) == {"n": 1}
    ws.close()


def test_handler_errors_are_collected_and_fail_verify(mock):
    def handler(message):
        if message == "bad":
            raise ValueError("cannot handle bad")

    mock.handle(handler)
    ws = connect(mock, "/event")
    ws.send("bad")
    ws.send("good")
    mock.wait_requests(2)
    assert [str(e) for e in mock.errors] == ["cannot handle bad"]
    with pytest.raises(MockExpectationError, match="ValueError: cannot handle bad") as info:
        mock.verify()
    assert isinstance(info.value.__cause__, ValueError)
    assert mock.errors == []
    ws.close()


def test_add_error_like_go_chains_and_is_reported(mock):
    assert mock.add_error(RuntimeError("one")).add_error("two") is mock
    assert [str(e) for e in mock.errors] == ["one", "two"]
    with pytest.raises(MockExpectationError, match="2 error"):
        mock.verify()


def test_wait_requests_counts_over_connections_and_times_out(mock):
    a = connect(mock, "/event")
    b = connect(mock, "/find")
    a.send("1")
    b.send("2")
    a.send("3")
    mock.wait_requests(3)
    with pytest.raises(TheiaTimeoutError, match=r"handled 3 of 4") as info:
        mock.wait_requests(4, timeout=0.05)
    assert isinstance(info.value, TimeoutError)
    a.close()
    b.close()


def test_events_decodes_what_was_received(mock):
    ws = connect(mock, "/event")
    ws.send_binary(encode(EV1))
    ws.send("not an event")
    ws.send(GO_EV1.decode())
    other = connect(mock, "/find")
    other.send_binary(encode(EV2))
    mock.wait_requests(4)
    assert [e.id for e in mock.events("/event")] == ["e1", "e1"]
    assert [e.id for e in mock.events()] == ["e1", "e1", "e2"]
    ws.close()
    other.close()


# --------------------------------------------------------------------------- the batch extension


def test_plain_mock_ignores_an_offered_subprotocol(mock):
    ws = connect(mock, "/find", header=[f"Sec-WebSocket-Protocol: {SUBPROTOCOL}"])
    assert "sec-websocket-protocol" not in {k.lower() for k in ws.getheaders()}
    ws.close()


def test_batch_mock_negotiates_and_speaks_arrow():
    with MockServer(batch=True) as mock:
        mock.expect(EV1, EV2, path="/event")
        mock.respond("ok", events_to_batch([EV1, EV2]), path="/find")
        plain = connect(mock, "/event")
        ws = connect(mock, "/find", header=[f"Sec-WebSocket-Protocol: {SUBPROTOCOL}"])
        assert ws.getheaders().get("sec-websocket-protocol") == SUBPROTOCOL
        assert "sec-websocket-protocol" not in plain.getheaders()
        plain.send_binary(batch_to_ipc(events_to_batch([EV1, EV2])))
        ws.send('{"start": 1}')
        assert ws.recv() == "ok"
        (batch,) = ipc_to_batches(ws.recv())
        assert [e.id for e in iter_batch_events(batch)] == ["e1", "e2"]
        mock.verify()
        assert [e.id for e in mock.events("/event")] == ["e1", "e2"]
        ws.close()
        plain.close()


def test_terminate_during_traffic_does_not_hang():
    mock = MockServer().on_live([EV1] * 100)
    clients = []
    for _ in range(5):
        ws = connect(mock, "/live")
        ws.send('{"start": 1}')
        clients.append(ws)
    mock.terminate()
    assert not mock._background.thread.is_alive()
    for ws in clients:
        ws.close()


# --------------------------------------------------------------------------- the pytest plugin


def plugin_args() -> list[str]:
    """``-p`` for the plugin unless its entry point already loads it (twice would be an error)."""
    for ep in importlib.metadata.entry_points(group="pytest11"):
        if ep.value == "theia_frames.testing.pytest_plugin":
            return []
    return ["-p", "theia_frames.testing.pytest_plugin"]


def test_plugin_fails_a_test_that_left_an_expectation_unmet(pytester):
    pytester.makepyfile(
        """
        import websocket

        def test_sends_the_wrong_filter(theia_mock):
            theia_mock.timeout = 0.05
            theia_mock.expect({"start": 10}, path="/find").on_find([])
            ws = websocket.create_connection(theia_mock.url + "/find")
            ws.send('{"start": 11}')
            ws.close()

        def test_sends_nothing(theia_mock):
            theia_mock.timeout = 0.05
            theia_mock.expect("hello", path="/event")
        """
    )
    result = pytester.runpytest(*plugin_args())
    result.assert_outcomes(failed=2)  # failures of the tests, not errors in teardown
    result.stdout.fnmatch_lines(
        [
            "*MockExpectationError: MockServer received an unexpected message on /find:",
            '*expected: JSON {"start": 10}',
            """*received: '{"start": 11}'""",
            "*MockExpectationError: MockServer expected a message that never arrived on /event (waited 0.05 s):",
            "*expected: 'hello'",
        ]
    )


def test_plugin_passes_met_expectations_and_terminates_the_mock(pytester):
    pytester.makepyfile(
        """
        import socket
        import pytest
        import websocket

        PORTS = []

        @pytest.fixture
        def scripted(theia_mock):
            # the plugin also verifies a mock that reaches the test through another fixture
            return theia_mock.expect("hi", path="/event")

        def test_says_hi(scripted):
            PORTS.append(scripted.port)
            ws = websocket.create_connection(scripted.url + "/event")
            ws.send("hi")
            ws.close()

        def test_forgets_to_say_hi(scripted):
            scripted.timeout = 0.05

        def test_the_mock_is_gone():
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", PORTS[0]), timeout=2)
        """
    )
    result = pytester.runpytest(*plugin_args())
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*FAILED*test_forgets_to_say_hi*"])


def test_plugin_keeps_a_tests_own_failure(pytester):
    pytester.makepyfile(
        """
        def test_fails_first(theia_mock):
            theia_mock.expect("never")
            assert 1 == 2, "its own failure"
        """
    )
    result = pytester.runpytest(*plugin_args())
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*its own failure*"])
    result.stdout.no_fnmatch_line("*MockExpectationError*")


def test_plugin_imports_nothing_heavy_for_tests_that_do_not_use_it(pytester):
    pytester.makepyfile(
        """
        import sys

        def test_untouched():
            assert "theia_frames.testing.pytest_plugin" in sys.modules
            loaded = [m for m in ("theia_frames.testing.mock", "websockets", "pandas", "pyarrow") if m in sys.modules]
            assert loaded == []
        """
    )
    result = pytester.runpytest_subprocess(*plugin_args())
    result.assert_outcomes(passed=1)


# --------------------------------------------------------------------------- our Client against the mock


def test_client_find_reads_a_scripted_answer(mock):
    mock.expect(Filter(10).match_tag("temp"), path="/find").on_find([EV1, EV2])
    with Client(mock.url) as client:
        result = client.find(Filter(10).match_tag("temp"))
        assert [e.id for e in result] == ["e1"]  # EV2 lacks the tag: the client re-checks
        assert result.complete
    mock.verify()


def test_client_find_raises_connection_closed_when_the_answer_is_dropped(mock):
    mock.respond("ok", EV1, path="/find").close_abruptly(path="/find")
    with Client(mock.url) as client:
        result = client.find(Filter(1))
        with pytest.raises(ConnectionClosed, match=re.escape(mock.url + "/find")) as info:
            list(result)
    assert info.value.code == 1006
    assert info.value.url == mock.url + "/find"


def test_client_find_raises_connection_closed_on_an_abnormal_close_code(mock):
    mock.respond("ok", path="/find").close_with(1011, "store on fire", path="/find")
    with Client(mock.url) as client, pytest.raises(ConnectionClosed, match="store on fire") as info:
        list(client.find(Filter(1)))
    assert info.value.code == 1011


def test_client_find_raises_server_error_with_the_servers_words(mock):
    mock.respond({"error": "Missing start timestamp"}, path="/find")
    with Client(mock.url) as client, pytest.raises(ServerError) as info:
        list(client.find(Filter(1)))
    assert info.value.text == "Missing start timestamp"


def test_client_times_out_on_a_stalled_server(mock):
    mock.stall(path="/find")
    with Client(mock.url, timeout=0.2) as client, pytest.raises(TheiaTimeoutError, match="did not answer"):
        client.find(Filter(1))


def test_client_ends_a_find_by_silence_like_on_the_upstream_collector(mock):
    # The upstream collector never closes a /find: the client ends it after idle_timeout.
    mock.respond("ok", EV1, path="/find").stall(path="/find")
    with Client(mock.url, idle_timeout=0.1) as client:
        result = client.find(Filter(1))
        assert [e.id for e in result] == ["e1"]
        assert result.complete and result.ended_by == "idle"


def test_client_handshake_refusals_map_to_our_errors(mock):
    mock.reject(401, path="/event").reject(503, path="/event")
    with Client(mock.url) as client:
        with pytest.raises(AuthenticationError, match="401"):
            client.send(EV1)
        with pytest.raises(ConnectError, match="503"):
            client.send(EV1)


def test_client_send_is_checked_by_expectations(mock):
    mock.expect(EV1, event_like(source="/dev/sensors/temp-2"), path="/event")
    with Client(mock.url) as client:
        client.send(EV1)
        client.send_many([EV2])
    mock.verify()
    assert mock.events("/event") == [EV1, EV2]


def test_client_receive_gets_pushed_events(mock):
    mock.expect(Filter(1550710745.5), path="/live").on_live([EV1])
    with Client(mock.url) as client, client.receive(Filter(1550710745.5)) as live:
        events = iter(live)
        assert next(events).id == "e1"
        mock.wait_requests(1)
        assert mock.push(EV2) == 1
        assert next(events).id == "e2"
    mock.verify()


def test_client_speaks_arrow_batches_to_a_batch_mock():
    with MockServer(batch=True) as mock, Client(mock.url) as client:
        mock.expect(EV1, EV2, path="/event")
        mock.respond("ok", events_to_batch([EV1, EV2]), path="/find").close_with(1000, path="/find")
        assert client.send_many([EV1, EV2]) == 2
        assert client.batched is True
        assert [b.num_rows for b in client.find(Filter(1)).iter_batches()] == [2]
        mock.verify()
        # the events (a handful go as plain messages), the flush find() sends first, then the filter
        assert [r.path for r in mock.received] == ["/event", "/event", "/event", "/find"]
        assert json.loads(mock.received[2].message) == {"flush": 1}


def test_plugin_fails_a_users_client_test_with_an_unmet_expectation(pytester):
    pytester.makepyfile(
        """
        from theia_frames import Client, Event
        from theia_frames.testing.mock import event_like

        def publish_reading(url, value):
            with Client(url) as client:
                client.send(Event(source="/dev/sensors/temp-1", tags=["sensor"], content=value))

        def test_publishes_the_reading(theia_mock):
            theia_mock.timeout = 0.1
            theia_mock.expect(event_like(content="21.5C"), path="/event")
            publish_reading(theia_mock.url, "19.0C")
        """
    )
    result = pytester.runpytest(*plugin_args())
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*MockServer received an unexpected message on /event:",
            "*expected: event_like(content='21.5C')",
            "*received: Event(*content='19.0C') (encoded)",
        ]
    )


def test_plugin_collector_and_client_fixtures(pytester):
    pytester.makepyfile(
        """
        import socket
        import time

        import pytest
        from theia_frames import Event, Filter

        URLS = []

        def found_ids(client, deadline=10.0):
            # sending is asynchronous: poll until the collector has stored the event
            end = time.monotonic() + deadline
            while True:
                ids = [e.id for e in client.find(Filter(1))]
                if ids or time.monotonic() > end:
                    return ids
                time.sleep(0.02)

        def test_round_trip(theia_collector, theia_client):
            URLS.append(theia_collector.url)
            assert theia_client.url == theia_collector.url
            theia_client.send(Event(id="a", timestamp=5.0, content="21.5C"))
            assert found_ids(theia_client) == ["a"]

        def test_each_test_gets_a_fresh_collector(theia_collector, theia_client):
            assert theia_collector.url != URLS[0]
            assert [e.id for e in theia_client.find(Filter(1))] == []

        def test_the_collector_is_stopped_after_its_test():
            port = int(URLS[0].rsplit(":", 1)[1])
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=2)
        """
    )
    result = pytester.runpytest(*plugin_args())
    result.assert_outcomes(passed=3)


def test_a_batch_mock_confirms_flushes_like_the_collector():
    with MockServer(batch=True) as mock, Client(mock.url) as client:
        client.send_many([EV1, EV2], wait=True)
        assert client.flush() == 2
        assert [r.message for r in mock.received if isinstance(r.message, str)] == ['{"flush": 1}']
