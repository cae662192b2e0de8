"""client.options without sockets: the option table both clients take, and what a failed connection means."""

from __future__ import annotations

import dataclasses
import inspect
import socket
import ssl

import pytest

import theia_frames as tf
from theia_frames.client.aio_transport import open_error
from theia_frames.client.options import CLIENT_OPTIONS, ClientSettings, SyncSettings, connect_error, handshake_error
from theia_frames.exceptions import AuthenticationError, ConnectError, HandshakeRefused, TheiaTimeoutError, UsageError


def test_the_option_table_is_the_clients_signature():
    table = {f.name for f in dataclasses.fields(SyncSettings) if f.init} - {"url"}
    assert CLIENT_OPTIONS == table
    assert set(inspect.signature(tf.Client).parameters) == table | {"url"}
    assert set(inspect.signature(tf.AsyncClient).parameters) == table - {"sslopt"} | {"url"}


@pytest.mark.parametrize("make", [tf.Client, tf.AsyncClient, ClientSettings])
@pytest.mark.parametrize(
    "kw", [{"timeout": 0}, {"idle_timeout": -1}, {"batch_size": 2.5}, {"max_message_size": 0}, {"max_fragments": True}]
)
def test_both_clients_check_their_options_in_one_way(make, kw):
    name = next(iter(kw))
    with pytest.raises(UsageError, match=f"^{name} must be a positive"):
        make("ws://127.0.0.1:1", **kw)


def test_tls_options_are_for_wss_only():
    with pytest.raises(UsageError, match="wss://"):
        ClientSettings("ws://127.0.0.1:1", ssl_context=ssl.create_default_context())
    context = ssl.create_default_context()
    assert tf.Client("wss://127.0.0.1:1", ssl_context=context).sslopt == {"context": context}
    assert tf.AsyncClient("wss://127.0.0.1:1", ssl_context=context).tls is context


@pytest.mark.parametrize(
    "status, error",
    [(401, AuthenticationError), (403, AuthenticationError), (404, HandshakeRefused), (200, HandshakeRefused)],
)
def test_a_refused_handshake_carries_its_status(status, error):
    refused = handshake_error("ws://h/find", status, "Client")
    assert type(refused) is error and refused.status == status and refused.reason == "handshake"
    assert f"HTTP status {status}" in str(refused) and refused.url == "ws://h/find"


@pytest.mark.parametrize("reason", ["refused", "unknown-host", "tls", "other"])
def test_a_connect_error_carries_its_reason(reason):
    error = connect_error("ws://h/find", reason, "detail")
    assert isinstance(error, ConnectError) and error.reason == reason and "ws://h/find" in str(error)


def test_a_handshake_that_does_not_finish_is_a_timeout():
    assert isinstance(connect_error("ws://h/find", "timeout", timeout=2.0), TheiaTimeoutError)


@pytest.mark.parametrize(
    "exc, reason",
    [
        (ConnectionRefusedError(), "refused"),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "unknown-host"),
        (ssl.SSLError("bad certificate"), "tls"),
        (OSError("no route to host"), "other"),
    ],
)
def test_the_asyncio_transport_gives_the_same_reasons(exc, reason):
    error = open_error(exc, "ws://h/find", 10)
    assert isinstance(error, ConnectError) and error.reason == reason
