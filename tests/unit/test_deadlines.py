"""Every network wait has a deadline: misbehaving servers on 127.0.0.1 cannot stretch an attempt.

Each test bounds the elapsed time loosely (the timeout plus 2 s): the bound is the behaviour under
test, not a speed claim.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from keybuzz_fix.checks import exchange
from keybuzz_fix.checks import http as probe
from keybuzz_fix.checks.http import HttpOptions
from tests.lab import slow_server as slow
from tests.lab.slow_server import SlowServer

SLACK = 2.0


@pytest.fixture()
def server() -> Iterator:
    made: list[SlowServer] = []

    def make(behaviour: slow.Behaviour, **kwargs: object) -> SlowServer:
        s = SlowServer(behaviour, **kwargs)  # type: ignore[arg-type]
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def opts(timeout: float, **kwargs: object) -> HttpOptions:
    return HttpOptions(**{"timeout": timeout, "retries": 0, "retry_delay": 0.01, **kwargs})  # type: ignore[arg-type]


def timed(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    start = time.monotonic()
    out = fn(*args, **kwargs)
    return out, time.monotonic() - start


def test_a_trickling_body_is_not_read_the_status_is_the_answer(server) -> None:
    s = server(slow.trickling_body)
    answer, took = timed(probe.http_get, f"http://127.0.0.1:{s.port}/", opts(3.0))
    assert (answer.status, answer.reason) == (200, "OK")
    assert took < 3.0 + SLACK


def test_a_round_against_a_trickling_body_ends_within_the_timeout(server) -> None:
    s = server(slow.trickling_body)
    result, took = timed(probe.http_round, f"http://127.0.0.1:{s.port}/", opts(3.0), count=4)
    assert result.ok and result.rounds == 1 and len(result.answers) == 4
    assert took < 3.0 + SLACK


def test_headers_sent_line_by_line_are_cut_at_the_deadline(server) -> None:
    s = server(slow.slow_headers)
    answer, took = timed(probe.http_get, f"http://127.0.0.1:{s.port}/", opts(1.5, retries=1))
    assert answer.status is None and answer.attempts == 2
    assert answer.reason == "timed out after 1.5 s (got 'HTTP/1.1 200 OK', the headers never ended)"
    assert 2 * 1.5 <= took < 2 * 1.5 + SLACK  # two whole attempts, each cut at its deadline


def test_a_status_line_dripped_byte_by_byte_is_cut_at_the_deadline(server) -> None:
    s = server(slow.slow_status_line)
    answer, took = timed(probe.http_get, f"http://127.0.0.1:{s.port}/", opts(1.0))
    assert answer.status is None and answer.reason.startswith("timed out after 1 s")
    assert took < 1.0 + SLACK


def test_a_server_that_accepts_and_never_answers(server) -> None:
    s = server(slow.silent)
    answer, took = timed(probe.http_get, f"http://127.0.0.1:{s.port}/", opts(1.0))
    assert (answer.status, answer.reason) == (None, "timed out after 1 s")
    assert took < 1.0 + SLACK
    tls, took = timed(probe.http_get, f"https://127.0.0.1:{s.port}/", opts(1.0, insecure=True))
    assert (tls.status, tls.reason) == (None, "timed out after 1 s")  # the TLS handshake never starts
    assert took < 1.0 + SLACK


def test_a_tls_handshake_that_stalls_mid_record(server) -> None:
    s = server(slow.stalled_tls_handshake)
    answer, took = timed(probe.http_get, f"https://127.0.0.1:{s.port}/", opts(1.0, insecure=True))
    assert (answer.status, answer.reason) == (None, "timed out after 1 s")
    assert took < 1.0 + SLACK


def test_an_interim_1xx_head_is_skipped(server) -> None:
    def early_hints(conn: socket.socket, stop) -> None:  # type: ignore[no-untyped-def]
        slow.read_request(conn, stop)
        conn.sendall(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 302 Found\r\nLocation: /login\r\n\r\n"
        )
        stop.wait(60)

    s = server(early_hints)
    answer = probe.http_get(f"http://127.0.0.1:{s.port}/", opts(2.0))
    assert (answer.status, answer.reason, answer.location) == (302, "Found", "/login")


def test_garbage_and_a_closed_connection_are_named(server) -> None:
    def garbage(conn: socket.socket, stop) -> None:  # type: ignore[no-untyped-def]
        slow.read_request(conn, stop)
        conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")

    def closes(conn: socket.socket, stop) -> None:  # type: ignore[no-untyped-def]
        slow.read_request(conn, stop)
        conn.close()

    a = probe.http_get(f"http://127.0.0.1:{server(garbage).port}/", opts(2.0))
    assert (a.status, a.reason) == (None, "not an HTTP answer: 'SSH-2.0-OpenSSH_9.6'")
    b = probe.http_get(f"http://127.0.0.1:{server(closes).port}/", opts(2.0))
    assert (b.status, b.reason) == (None, "connection closed without an answer")


def test_a_tcp_check_against_a_full_accept_queue_is_bounded(server) -> None:
    # backlog 0 and nobody accepting: once the queue is full the kernel drops new SYNs, as a firewall would
    s = server(slow.silent, backlog=0, accept=False)
    held = []
    for _ in range(3):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(("127.0.0.1", s.port))
        held.append(c)
    time.sleep(0.2)
    try:
        (ok, detail), took = timed(exchange.tcp_open, "127.0.0.1", s.port, 1.0)
    finally:
        for c in held:
            c.close()
    assert not ok and detail == f"127.0.0.1:{s.port}: no answer in 1 s (dropped by a firewall?)"
    assert took < 1.0 + SLACK


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"HTTP/1.1 200 OK\r\n\r\n", (200, "OK", {})),
        (b"HTTP/1.0 504 Gateway Time-out\r\nServer: x\r\n\r\nbody", (504, "Gateway Time-out", {"server": "x"})),
        (b"HTTP/1.1 301 \r\nLocation: /a\r\nlocation: /b\r\n\r\n", (301, "", {"location": "/a"})),
        (b"HTTP/2 204\r\n\r\n", (204, "", {})),
    ],
)
def test_parse_head(head: bytes, expected: tuple) -> None:
    assert exchange.parse_head(head) == expected


@pytest.mark.parametrize("head", [b"HTTP/1.1 2000 OK\r\n\r\n", b"hello\r\n\r\n", b"HTTP/1.1 abc\r\n\r\n"])
def test_parse_head_refuses(head: bytes) -> None:
    with pytest.raises(exchange.BadAnswer):
        exchange.parse_head(head)


# -- API calls -------------------------------------------------------------------------------------


def pool():  # type: ignore[no-untyped-def]
    import urllib3

    return urllib3.PoolManager(cert_reqs="CERT_NONE", assert_hostname=False)  # the servers here speak no real TLS


def trickling_json(conn: socket.socket, stop) -> None:  # type: ignore[no-untyped-def]
    slow.read_request(conn, stop)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
    while not stop.wait(0.2):
        conn.sendall(b" ")


@pytest.mark.parametrize(
    ("behaviour", "scheme"),
    [
        (trickling_json, "http"),  # a body that never ends
        (slow.slow_headers, "http"),  # headers line by line
        (slow.silent, "http"),  # accepts, never answers
        (slow.silent, "https"),  # the TLS handshake never starts
        (slow.stalled_tls_handshake, "https"),  # the handshake stalls mid-record
    ],
)
def test_an_api_call_ends_within_its_timeout(server, behaviour, scheme: str) -> None:
    from keybuzz_fix.cluster.client import Kube
    from keybuzz_fix.cluster.rest import Endpoint
    from keybuzz_fix.errors import ClusterError

    s = server(behaviour)
    kube = Kube(Endpoint(f"{scheme}://127.0.0.1:{s.port}", pool(), source="test"), timeout=1.5)
    start = time.monotonic()
    with pytest.raises(ClusterError) as caught:
        kube.list("Ingress")
    took = time.monotonic() - start
    assert took < 1.5 + SLACK
    assert str(caught.value).startswith(f"no complete answer from the Kubernetes API at {scheme}://127.0.0.1:") or (
        "cannot reach the Kubernetes API" in str(caught.value) and "timed out" in str(caught.value).lower()
    )
    assert "\n" not in str(caught.value)


def test_an_api_call_after_a_cut_one_works_again(server) -> None:
    """The connection the deadline cut is not reused: the next call on the same client gets its answer."""
    from keybuzz_fix.cluster.client import Kube
    from keybuzz_fix.cluster.rest import Endpoint
    from keybuzz_fix.errors import ClusterError

    calls = []

    def first_slow_then_fine(conn: socket.socket, stop) -> None:  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 1:
            trickling_json(conn, stop)
            return
        slow.read_request(conn, stop)
        body = b'{"items": [{"metadata": {"name": "a"}}]}'
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
        stop.wait(60)

    s = server(first_slow_then_fine)
    kube = Kube(Endpoint(f"http://127.0.0.1:{s.port}", pool(), source="test"), timeout=1.0)
    with pytest.raises(ClusterError):
        kube.list("Ingress")
    assert [i["metadata"]["name"] for i in kube.list("Ingress")] == ["a"]


# -- SSH connections ---------------------------------------------------------------------------------


def banner_then_silence(conn: socket.socket, stop) -> None:  # type: ignore[no-untyped-def]
    conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")  # then no key exchange, ever
    stop.wait(60)


def kexinit_dripped(conn: socket.socket, stop) -> None:  # type: ignore[no-untyped-def]
    conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
    slow.drip(conn, stop, b"\x00\x00\x04\x00" + b"\x00" * 1024, 0.2)  # a 1 KiB packet, a byte every 0.2 s


@pytest.mark.parametrize(
    "behaviour",
    [
        slow.silent,  # no banner
        lambda conn, stop: slow.drip(conn, stop, b"SSH-2.0-" + b"x" * 200 + b"\r\n", 0.2),  # a banner dripped
        banner_then_silence,  # the key exchange never starts
        kexinit_dripped,  # the key exchange dripped
    ],
    ids=["silent", "banner-dripped", "no-key-exchange", "key-exchange-dripped"],
)
def test_an_ssh_connection_ends_within_its_timeout(server, behaviour, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from keybuzz_fix.errors import HostUnreachable
    from keybuzz_fix.hosts.ssh import open_session
    from keybuzz_fix.hosts.sshoptions import SshOptions
    from keybuzz_fix.inventory import Host

    s = server(behaviour)
    host = Host("k8s-worker-01", "127.0.0.1", None, "root", "prod", "k3s", "worker")
    config = tmp_path / "ssh_config"
    config.write_text(f"Host *\n  Port {s.port}\n")
    options = SshOptions(
        known_hosts=tmp_path / "known_hosts",
        accept_new_host_keys=True,
        connect_timeout=1.5,
        ssh_config=config,
        system_ssh_config=None,
    )
    start = time.monotonic()
    with pytest.raises(HostUnreachable) as caught:
        open_session(host, options)
    took = time.monotonic() - start
    assert took < 1.5 + SLACK
    assert "no SSH answer within 1.5s (--timeout)" in str(caught.value)


def test_a_watch_that_trickles_past_its_time_ends(server) -> None:
    """The API server ends a watch after timeoutSeconds; a stream that trickles on is cut 10 s later."""
    from keybuzz_fix.cluster.client import Kube
    from keybuzz_fix.cluster.rest import Endpoint

    def bookmarks_forever(conn: socket.socket, stop) -> None:  # type: ignore[no-untyped-def]
        slow.read_request(conn, stop)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        event = b'{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "7"}}}\n'
        while not stop.wait(0.2):
            conn.sendall(b"%x\r\n%s\r\n" % (len(event), event))

    s = server(bookmarks_forever)
    kube = Kube(Endpoint(f"http://127.0.0.1:{s.port}", pool(), source="test"), timeout=2.0)
    start = time.monotonic()
    events = list(kube.watch("DaemonSet", "keybuzz", resource_version="1", timeout=1.0))
    took = time.monotonic() - start
    assert events and all(kind == "BOOKMARK" for kind, _ in events)
    assert 1.0 + 10 <= took < 1.0 + 10 + SLACK


def test_a_resolver_that_never_answers_is_cut_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The system resolver has no timeout of its own: the lookup runs aside and the attempt stops waiting."""
    import threading

    release = threading.Event()

    def stuck(*args: object, **kwargs: object) -> list:
        release.wait(30)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", stuck)
    try:
        answer, took = timed(probe.http_get, "http://platform.keybuzz.io/", opts(1.0))
    finally:
        release.set()
    assert (answer.status, answer.reason) == (None, "timed out after 1 s")
    assert took < 1.0 + SLACK


def _ssh_options(tmp_path, config_text: str):  # type: ignore[no-untyped-def]
    from keybuzz_fix.hosts.sshoptions import SshOptions

    config = tmp_path / "ssh_config"
    config.write_text(config_text)
    return SshOptions(
        known_hosts=tmp_path / "known_hosts",
        accept_new_host_keys=True,
        connect_timeout=1.5,
        ssh_config=config,
        system_ssh_config=None,
    )


@pytest.mark.parametrize(
    "command",
    [
        "exec sleep 30",  # says nothing
        "printf SSH-2.0-; while :; do printf x; sleep 0.2; done",  # a banner dripped
        "printf 'SSH-2.0-OpenSSH_9.6\\r\\n'; exec sleep 30",  # the key exchange never starts
    ],
    ids=["silent", "banner-dripped", "no-key-exchange"],
)
def test_an_ssh_connection_through_a_proxycommand_ends_within_its_timeout(command: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A ProxyCommand (a bastion's ``ssh -W``, a cloud's tunnel) that stalls or trickles is cut as a socket is."""
    from keybuzz_fix.errors import HostUnreachable
    from keybuzz_fix.hosts.ssh import open_session
    from keybuzz_fix.inventory import Host

    script = tmp_path / "proxy.sh"
    script.write_text(command + "\n")
    host = Host("k8s-worker-01", "198.18.0.11", None, "root", "prod", "k3s", "worker")
    options = _ssh_options(tmp_path, f"Host *\n  ProxyCommand sh {script}\n")
    start = time.monotonic()
    with pytest.raises(HostUnreachable) as caught:
        open_session(host, options)
    took = time.monotonic() - start
    assert took < 1.5 + SLACK, took
    assert "(ProxyCommand)" in str(caught.value) and "no SSH answer within 1.5s (--timeout)" in str(caught.value)


def test_an_ssh_host_name_whose_lookup_never_answers_is_cut_at_the_deadline(monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """ssh_config's HostName may be a name: the system resolver has no timeout of its own."""
    import threading

    from keybuzz_fix.errors import HostUnreachable
    from keybuzz_fix.hosts.ssh import open_session
    from keybuzz_fix.inventory import Host

    release = threading.Event()
    real = socket.getaddrinfo

    def stuck(host: str, port: object, *args: Any, **kwargs: Any) -> list:
        flags = args[3] if len(args) > 3 else kwargs.get("flags", 0)
        if host != "worker-01.keybuzz.invalid" or flags & socket.AI_NUMERICHOST:  # no resolver asked
            return real(host, port, *args, **kwargs)
        release.wait(30)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", stuck)
    host = Host("k8s-worker-01", "198.18.0.11", None, "root", "prod", "k3s", "worker")
    options = _ssh_options(tmp_path, "Host *\n  HostName worker-01.keybuzz.invalid\n")
    start = time.monotonic()
    try:
        with pytest.raises(HostUnreachable) as caught:
            open_session(host, options)
    finally:
        release.set()
    assert time.monotonic() - start < 1.5 + SLACK
    assert "worker-01.keybuzz.invalid" in str(caught.value) and "1.5s" in str(caught.value), str(caught.value)
