"""Misbehaving TCP servers on 127.0.0.1 for the deadline tests: each connection gets a scripted behaviour.

A behaviour is a function of (connection, stop event); it may drip bytes forever, stopping when the
test ends. Every server thread is a daemon and is stopped, and its sockets closed, on ``close``.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

Behaviour = Callable[[socket.socket, threading.Event], None]


class SlowServer:
    """A listener on 127.0.0.1 that runs ``behaviour`` on every connection it accepts."""

    def __init__(self, behaviour: Behaviour, *, backlog: int = 16, accept: bool = True) -> None:
        self.stop = threading.Event()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(backlog)
        self.port = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        self._behaviour = behaviour
        self._threads: list[threading.Thread] = []
        if accept:
            t = threading.Thread(target=self._accept, daemon=True)
            t.start()
            self._threads.append(t)

    def _accept(self) -> None:
        self.listener.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections.append(conn)
            t = threading.Thread(target=self._run, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _run(self, conn: socket.socket) -> None:
        try:
            self._behaviour(conn, self.stop)
        except OSError:
            pass

    def close(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=5)
        for c in self.connections:
            c.close()
        self.listener.close()


def drip(conn: socket.socket, stop: threading.Event, data: bytes, every: float) -> None:
    """Send ``data`` one byte every ``every`` seconds, then keep the connection open until the test ends."""
    for i in range(len(data)):
        if stop.wait(every):
            return
        conn.sendall(data[i : i + 1])
    stop.wait(60)


def read_request(conn: socket.socket, stop: threading.Event) -> None:
    """Read the request head (so that the client is waiting for the answer)."""
    conn.settimeout(0.1)
    buf = b""
    while b"\r\n\r\n" not in buf and not stop.is_set():
        try:
            chunk = conn.recv(4096)
        except TimeoutError:
            continue
        if not chunk:
            return
        buf += chunk
    conn.settimeout(None)


def trickling_body(conn: socket.socket, stop: threading.Event) -> None:
    """200, chunked, then a byte of an event stream every 0.2 s until the test ends."""
    read_request(conn, stop)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
    while not stop.wait(0.2):
        conn.sendall(b"1\r\n.\r\n")


def slow_headers(conn: socket.socket, stop: threading.Event) -> None:
    """The status line at once, then one header line every 0.3 s, never the blank line."""
    read_request(conn, stop)
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    n = 0
    while not stop.wait(0.3):
        n += 1
        conn.sendall(f"X-Slow-{n}: yes\r\n".encode())


def slow_status_line(conn: socket.socket, stop: threading.Event) -> None:
    """The whole answer, one byte every 0.2 s."""
    read_request(conn, stop)
    drip(conn, stop, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0.2)


def silent(conn: socket.socket, stop: threading.Event) -> None:
    """Accept and never answer (nor read)."""
    stop.wait(60)


def stalled_tls_handshake(conn: socket.socket, stop: threading.Event) -> None:
    """Start a TLS record (handshake, 80 bytes long) and drip its body a byte every 0.2 s."""
    conn.sendall(b"\x16\x03\x03\x00\x50")
    drip(conn, stop, b"\x02" + b"\x00" * 79, 0.2)
