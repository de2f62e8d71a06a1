"""The URL probe against small servers on 127.0.0.1 (loopback only, no other network)."""

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from keybuzz_fix.checks import exchange
from keybuzz_fix.checks import http as probe
from keybuzz_fix.checks.http import HttpOptions
from keybuzz_fix.errors import UsageError
from tests.lab.testca import make_test_ca

NAMES = ["platform.keybuzz.io", "platform-api.keybuzz.io"]


class Server:
    """A loopback HTTP(S) server answering a programmable status, recording what it saw."""

    def __init__(self, statuses: list[int], tls: ssl.SSLContext | None = None) -> None:
        self.statuses = list(statuses)
        self.seen: list[tuple[str, str, str | None]] = []  # (Host header, path, SNI)
        self.sni: str | None = None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                status = outer.statuses.pop(0) if len(outer.statuses) > 1 else outer.statuses[0]
                outer.seen.append((self.headers.get("Host", ""), self.path, outer.sni))
                self.send_response(status)
                if status in (301, 302):
                    self.send_header("Location", "https://elsewhere.example/")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:

            def remember(sock: ssl.SSLSocket, name: str | None, ctx: ssl.SSLContext) -> None:
                outer.sni = name

            tls.sni_callback = remember
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def serve() -> Iterator:
    servers: list[Server] = []

    def make(statuses: list[int], tls: ssl.SSLContext | None = None) -> Server:
        s = Server(statuses, tls)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory):
    return make_test_ca(tmp_path_factory.mktemp("ca"), NAMES)


def server_tls(ca) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(ca.cert_file, ca.key_file)
    return ctx


def opts(**kwargs: object) -> HttpOptions:
    return HttpOptions(**{"timeout": 2.0, "retries": 0, "retry_delay": 0.01, **kwargs})  # type: ignore[arg-type]


def test_200(serve) -> None:
    s = serve([200])
    a = probe.http_get(f"http://127.0.0.1:{s.port}/health?x=1", opts())
    assert a.ok and a.status == 200 and a.attempts == 1
    assert s.seen == [(f"127.0.0.1:{s.port}", "/health?x=1", None)]
    assert a.describe().startswith(f"200 OK via 127.0.0.1:{s.port} (1 attempt, ")


def test_504_is_retried_and_shown_as_504(serve) -> None:
    s = serve([504])
    a = probe.http_get(f"http://127.0.0.1:{s.port}/", opts(retries=2))
    assert (a.status, a.reason, a.attempts, a.ok) == (504, "Gateway Timeout", 3, False)
    assert len(s.seen) == 3
    assert a.describe().startswith(f"504 Gateway Timeout via 127.0.0.1:{s.port} (3 attempts")


def test_a_retry_that_succeeds(serve) -> None:
    s = serve([503, 200])
    a = probe.http_get(f"http://127.0.0.1:{s.port}/", opts(retries=2))
    assert a.ok and a.attempts == 2


def test_404_and_redirects_are_not_retried_nor_followed(serve) -> None:
    s = serve([302])
    a = probe.http_get(f"http://127.0.0.1:{s.port}/", opts(retries=3))
    assert (a.status, a.attempts, a.location) == (302, 1, "https://elsewhere.example/")
    assert "302 Found → https://elsewhere.example/" in a.describe()


def test_a_round_sends_every_request_on_its_own_connection(serve) -> None:
    s = serve([200])
    r = probe.http_round(f"http://127.0.0.1:{s.port}/", opts(), count=6)
    assert r.ok and r.rounds == 1 and len(r.answers) == 6 and len(s.seen) == 6
    assert r.describe().startswith(f"6/6 answered 200 via 127.0.0.1:{s.port} (1 round, ")


def test_a_round_with_one_failure_fails_and_is_tried_again_whole(serve) -> None:
    """A retry is a new round of every request: one good answer after a failure proves nothing."""
    s = serve([200, 200, 504, 200])  # the last status repeats: the second round is all 200
    r = probe.http_round(f"http://127.0.0.1:{s.port}/", opts(retries=1), count=3)
    assert r.ok and r.rounds == 2 and len(s.seen) == 6
    s = serve([504])
    r = probe.http_round(f"http://127.0.0.1:{s.port}/", opts(retries=1), count=3)
    assert not r.ok and r.rounds == 2 and len(s.seen) == 6
    assert "0/3 answered 200" in r.describe() and "3 × 504 Gateway Timeout" in r.describe()


def test_a_404_round_is_tried_again_while_settling(serve) -> None:
    """Right after routes are applied, ingress-nginx answers 404 until it serves them: `all` waits a while."""
    s = serve([404, 404, 404, 404, 200])
    r = probe.http_round(f"http://127.0.0.1:{s.port}/", opts(retries=0, settle=5.0), count=2)
    assert r.ok and r.rounds == 3
    s = serve([404])
    started = time.monotonic()
    r = probe.http_round(f"http://127.0.0.1:{s.port}/", opts(retries=0, settle=0.3), count=2)
    assert not r.ok and time.monotonic() - started < 3  # bounded by the settle time, not endless


def test_resolve_keeps_the_host_name(serve) -> None:
    s = serve([200])
    resolve = probe.parse_resolve([f"platform.keybuzz.io:{s.port}:127.0.0.1"])
    a = probe.http_get(f"http://platform.keybuzz.io:{s.port}/", opts(resolve=resolve))
    assert a.ok and a.address == f"127.0.0.1:{s.port}"
    assert s.seen[0][0] == f"platform.keybuzz.io:{s.port}"


def test_https_with_ca_file_sends_sni_and_verifies(serve, ca) -> None:
    s = serve([200], server_tls(ca))
    resolve = probe.parse_resolve([f"platform-api.keybuzz.io:{s.port}:127.0.0.1"])
    a = probe.http_get(f"https://platform-api.keybuzz.io:{s.port}/", opts(resolve=resolve, ca_file=ca.ca_file))
    assert a.ok, a.describe()
    assert s.seen == [(f"platform-api.keybuzz.io:{s.port}", "/", "platform-api.keybuzz.io")]


def test_https_untrusted_or_wrong_name_fails_without_retry(serve, ca, tmp_path: Path) -> None:
    s = serve([200], server_tls(ca))
    other = make_test_ca(tmp_path / "other", NAMES)
    resolve = probe.parse_resolve([f"platform.keybuzz.io:{s.port}:127.0.0.1", f"wrong.example:{s.port}:127.0.0.1"])
    a = probe.http_get(
        f"https://platform.keybuzz.io:{s.port}/", opts(resolve=resolve, ca_file=other.ca_file, retries=2)
    )
    assert a.status is None and a.attempts == 1 and "TLS certificate not trusted" in a.reason
    b = probe.http_get(f"https://wrong.example:{s.port}/", opts(resolve=resolve, ca_file=ca.ca_file))
    assert b.status is None and "TLS certificate not trusted" in b.reason and "wrong.example" in b.reason
    c = probe.http_get(f"https://wrong.example:{s.port}/", opts(resolve=resolve, insecure=True))
    assert c.ok  # only with the explicit --insecure


def test_connection_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    a = probe.http_get(f"http://127.0.0.1:{port}/", opts(retries=1))
    assert (a.status, a.reason, a.attempts) == (None, "connection refused", 2)
    assert a.describe().startswith(f"error: connection refused via 127.0.0.1:{port} (2 attempts")
    ok, detail = exchange.tcp_open("127.0.0.1", port, 1.0)
    assert not ok and "connection refused" in detail


def test_a_silent_server_is_bounded_by_the_timeout() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        start = time.monotonic()
        a = probe.http_get(f"http://127.0.0.1:{port}/", opts(timeout=0.3, retries=1))
        took = time.monotonic() - start
    assert a.status is None and a.reason == "timed out after 0.3 s" and a.attempts == 2
    assert took < 2.0


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["platform.keybuzz.io:443:10.0.0.2"], {("platform.keybuzz.io", 443): "10.0.0.2"}),
        (["Platform.Keybuzz.IO:443:10.0.0.2"], {("platform.keybuzz.io", 443): "10.0.0.2"}),
        (["a.test:80:[2001:db8::1]"], {("a.test", 80): "2001:db8::1"}),
        (["a.test:80:2001:db8::1"], {("a.test", 80): "2001:db8::1"}),
        (["a.test:80:10.0.0.2", "a.test:80:10.0.0.2"], {("a.test", 80): "10.0.0.2"}),
    ],
)
def test_parse_resolve(values: list[str], expected: dict) -> None:
    assert probe.parse_resolve(values) == expected


@pytest.mark.parametrize(
    "value",
    [
        "a.test",
        "a.test:80",
        ":80:10.0.0.1",
        "a.test:0:10.0.0.1",
        "a.test:99999:1.2.3.4",
        "a.test:80:not-an-ip",
        "a.test:80:$(touch /tmp/x)",
    ],
)
def test_parse_resolve_refuses(value: str) -> None:
    with pytest.raises(UsageError):
        probe.parse_resolve([value])


def test_parse_resolve_refuses_two_addresses_for_one_name() -> None:
    with pytest.raises(UsageError, match="given twice"):
        probe.parse_resolve(["a.test:80:10.0.0.1", "a.test:80:10.0.0.2"])


def test_target() -> None:
    assert probe.split_url("https://platform.keybuzz.io") == ("https", "platform.keybuzz.io", 443, "/")
    assert probe.split_url("http://X.test:8080/a?b=1") == ("http", "x.test", 8080, "/a?b=1")
    with pytest.raises(UsageError):
        probe.split_url("ftp://x.test/")
