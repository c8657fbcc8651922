"""The upstream transport one rule at a time, against a scripted loopback server: which failures are
retried and how often, kept-alive connections, timeouts under the request deadline, answer size, and
the settings that make an endpoint."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

import xboot.service.ca.issuers.transport as transport
from xboot.errors import BackendUnavailable, BadGateway, ConfigurationError
from xboot.service import deadline
from xboot.service.settings import Settings


class Scripted:
    """Each request gets the next action: ("answer", status, body, keep_alive), ("drop",) closes the
    connection without answering, ("hang", seconds). The last action repeats."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.script: list[tuple] = [("answer", 200, b"ok", True)]
        self.requests = 0
        self.connections = 0
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            self.sockets.append(connection)
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        buffer = b""
        with connection:
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = connection.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)  # fmt: skip
                while len(buffer) < length:
                    buffer += connection.recv(65536)
                buffer = buffer[length:]
                self.requests += 1
                action = self.script[min(self.requests, len(self.script)) - 1]
                if action[0] == "drop":
                    return
                if action[0] == "hang":
                    time.sleep(action[1])
                    return
                _, status, body, keep_alive = action
                connection.sendall(
                    f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n".encode()
                    + (b"" if keep_alive else b"Connection: close\r\n")
                    + b"\r\n"
                    + body
                )
                if not keep_alive:
                    return

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def server() -> Iterator[Scripted]:
    transport.clear_connections()
    scripted = Scripted()
    yield scripted
    scripted.close()
    transport.clear_connections()


def endpoint(server: Scripted, **extra: str) -> transport.Endpoint:
    return transport.endpoint(Settings({"IssuerUrl": f"http://127.0.0.1:{server.port}/base/", **extra}), "Test")


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []  # the transport's backoff, recorded instead of slept (only the transport's clock)
    monkeypatch.setattr(transport, "time", SimpleNamespace(sleep=slept.append, monotonic=time.monotonic))
    return slept


def test_a_good_answer_is_one_request_on_the_path_under_the_base(server, pauses):
    answer = endpoint(server).call("POST", "/sign", b"{}")
    assert (answer.status, answer.body, server.requests, pauses) == (200, b"ok", 1, [])


@pytest.mark.parametrize("status", [502, 503, 504])
def test_gateway_statuses_are_tried_three_times_with_backoff(status, server, pauses):
    server.script = [("answer", status, b"", True)]
    with pytest.raises(BackendUnavailable) as caught:
        endpoint(server).call("POST", "/sign", b"{}")
    assert caught.value.code == "upstream_unavailable" and caught.value.retry_after == 10
    assert server.requests == 3 and pauses == [0.2, 0.4]


def test_a_recovered_upstream_answers_on_the_second_attempt(server, pauses):
    server.script = [("answer", 503, b"", True), ("answer", 200, b"ok", True)]
    assert endpoint(server).call("POST", "/sign", b"{}").body == b"ok"
    assert server.requests == 2 and pauses == [0.2]


@pytest.mark.parametrize("status", [200, 400, 404, 500])
def test_other_statuses_are_answers(status, server, pauses):
    server.script = [("answer", status, b"x", True)]
    assert endpoint(server).call("POST", "/sign", b"{}").status == status
    assert server.requests == 1


def test_a_connection_dropped_before_an_answer_is_retried(server, pauses):
    server.script = [("drop",), ("answer", 200, b"ok", True)]
    assert endpoint(server).call("POST", "/sign", b"{}").body == b"ok"
    assert server.requests == 2 and pauses == [0.2]


def test_a_kept_alive_connection_is_reused_and_a_stale_one_replaced_at_once(server, pauses):
    upstream = endpoint(server)
    upstream.call("POST", "/a", b"{}")
    upstream.call("POST", "/b", b"{}")
    assert server.connections == 1
    for connection in server.sockets:  # the upstream closes its idle connection
        connection.shutdown(socket.SHUT_RDWR)
    time.sleep(0.05)  # let the close reach our socket
    assert upstream.call("POST", "/c", b"{}").body == b"ok"
    assert server.connections == 2 and pauses == []  # replaced within the attempt, no backoff


def test_connection_close_is_honoured(server, pauses):
    server.script = [("answer", 200, b"ok", False)]
    upstream = endpoint(server)
    upstream.call("POST", "/a", b"{}")
    upstream.call("POST", "/b", b"{}")
    assert server.connections == 2 and pauses == []


def test_a_read_timeout_is_not_retried(server, pauses):
    server.script = [("hang", 10)]
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as caught:
        endpoint(server, IssuerTimeoutSeconds="1").call("POST", "/sign", b"{}")
    assert "did not answer in time" in caught.value.message and caught.value.retry_after == 10
    assert server.requests == 1 and time.monotonic() - started < 5


def test_a_kept_alive_connection_takes_this_request_s_deadline(server, pauses):
    upstream = endpoint(server, IssuerTimeoutSeconds="30")
    upstream.call("POST", "/a", b"{}")  # connected with a 30 s timeout
    server.script = [("answer", 200, b"ok", True), ("hang", 10)]
    started = time.monotonic()
    with deadline.request_deadline(0.5), pytest.raises(BackendUnavailable):
        upstream.call("POST", "/b", b"{}")
    assert time.monotonic() - started < 5  # 30 s if the kept-alive socket kept its old timeout


def test_past_the_deadline_nothing_is_sent(server, pauses):
    with deadline.request_deadline(-1), pytest.raises(BackendUnavailable):
        endpoint(server).call("POST", "/sign", b"{}")
    assert server.requests == 0


def test_no_retry_starts_that_would_end_past_the_deadline(server, pauses):
    server.script = [("answer", 503, b"", True)]
    with deadline.request_deadline(0.15), pytest.raises(BackendUnavailable):
        endpoint(server).call("POST", "/sign", b"{}")
    assert server.requests == 1 and pauses == []  # a 0.2 s pause would leave no time for an attempt


def test_an_answer_over_256_kib_is_refused_and_256_kib_taken(server, pauses):
    server.script = [("answer", 200, b"x" * transport.MAX_ANSWER_BYTES, True)]
    assert len(endpoint(server).call("POST", "/sign", b"{}").body) == transport.MAX_ANSWER_BYTES
    server.script = [("answer", 200, b"x" * (transport.MAX_ANSWER_BYTES + 1), True)]
    server.requests = 0
    with pytest.raises(BadGateway, match="too much data"):
        endpoint(server).call("POST", "/sign", b"{}")


def test_nobody_listening_is_three_attempts_then_503(pauses):
    transport.clear_connections()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(BackendUnavailable) as caught:
        transport.endpoint(Settings({"IssuerUrl": f"http://127.0.0.1:{port}"}), "Test").call("GET", "/x")
    assert "is unavailable" in caught.value.message and pauses == [0.2, 0.4]


# -- the settings that make an endpoint ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://h/x", "http:// or https://"),
        ("http:///x", "http:// or https://"),
        ("http://h/x?a=1", "without query"),
        ("http://h/x#f", "without query"),
        ("https://user:pw@h/x", "no credentials"),
        ("https://user@h/x", "no credentials"),
        ("http://h:99999/x", "invalid port"),
    ],
)
def test_urls_that_cannot_be_used_are_configuration_errors(url, message):
    transport.clear_connections()
    with pytest.raises(ConfigurationError, match=message):
        transport.endpoint(Settings({"IssuerUrl": url}), "Test")


def test_ports_default_by_scheme_and_paths_lose_their_trailing_slash():
    transport.clear_connections()
    plain = transport.endpoint(Settings({"IssuerUrl": "http://h.example/est/"}), "Test")
    secure = transport.endpoint(Settings({"IssuerUrl": "https://h.example"}), "Test")
    assert (plain.port, plain.path, plain.context) == (80, "/est", None)
    assert (secure.port, secure.path, secure.context is not None) == (443, "", True)
    assert not plain.loopback and transport.endpoint(Settings({"IssuerUrl": "http://localhost:1"}), "T").loopback


def test_tls_settings_on_plain_http_are_refused(tmp_path: Path):
    transport.clear_connections()
    (tmp_path / "ca.pem").write_text("x")
    with pytest.raises(ConfigurationError, match="use https://"):
        transport.endpoint(Settings({"IssuerUrl": "http://h/x", "IssuerTlsCaFile": str(tmp_path / "ca.pem")}), "T")


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"IssuerTlsCaFile": "missing"}, "IssuerTlsCaFile: no such file"),
        ({"IssuerTlsCaFile": "junk"}, "not a PEM bundle"),
        ({"IssuerClientCertificateFile": "junk"}, "go together"),
        ({"IssuerClientKeyFile": "junk"}, "go together"),
        ({"IssuerClientCertificateFile": "junk", "IssuerClientKeyFile": "junk"}, "unencrypted key"),
    ],
)
def test_tls_files_that_cannot_be_used_are_configuration_errors(files, message, tmp_path: Path):
    transport.clear_connections()
    (tmp_path / "junk").write_text("not pem")
    settings = {"IssuerUrl": "https://h/x", **{name: str(tmp_path / value) for name, value in files.items()}}
    with pytest.raises(ConfigurationError, match=message):
        transport.endpoint(Settings(settings), "Test")


def test_endpoints_are_made_once_per_settings_and_at_most_seventeen_kept():
    transport.clear_connections()
    first = transport.endpoint(Settings({"IssuerUrl": "http://h/0"}), "Test")
    assert transport.endpoint(Settings({"IssuerUrl": "http://h/0"}), "Test") is first
    for n in range(1, 17):
        transport.endpoint(Settings({"IssuerUrl": f"http://h/{n}"}), "Test")
    assert len(transport._endpoints) == 17
    transport.endpoint(Settings({"IssuerUrl": "http://h/17"}), "Test")
    assert len(transport._endpoints) == 1
    transport.clear_connections()
    assert transport._endpoints == {}


def test_after_a_timeout_the_next_request_gets_a_fresh_connection(server, pauses):
    upstream = endpoint(server, IssuerTimeoutSeconds="1")
    server.script = [("hang", 10), ("answer", 200, b"ok", True)]
    with pytest.raises(BackendUnavailable):
        upstream.call("POST", "/a", b"{}")
    assert upstream.call("POST", "/b", b"{}").body == b"ok"
    assert server.connections == 2 and pauses == []
