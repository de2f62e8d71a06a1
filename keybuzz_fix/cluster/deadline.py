"""The deadline of one API request: its sockets shut down when its time is up, whatever the server does.

urllib3's timeouts bound each wait for a byte, not the request; a deadline bounds the whole of it. The
connection pools of :func:`watching_pools` hand each socket to the deadline of the request under way in
their thread (:data:`CURRENT`), which :mod:`keybuzz_fix.cluster.rest` and the watch of
:mod:`keybuzz_fix.cluster.client` set around each request.
"""

from __future__ import annotations

import functools
import socket
import threading
from typing import Any


class Deadline:
    """Shut a request's sockets down when its time is up, whatever the server does.

    urllib3's timeouts bound each wait for a byte, not the request: a server that sends its headers
    or its body a few bytes at a time keeps a request alive for ever. The connection classes of
    :func:`watching_pools` hand their sockets to the deadline of the request under way in their thread.
    """

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        """Put ``sock`` under this deadline (shut it at once if the time is already up)."""
        with self._lock:
            if self.expired:
                _shut(sock)
            else:
                self._socks.append(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            socks, self._socks = self._socks, []
        for sock in socks:
            _shut(sock)

    def cancel(self) -> None:
        """Stop the timer: the request is over, its sockets go back to the pool untouched."""
        self._timer.cancel()
        with self._lock:
            self._socks = []


CURRENT = threading.local()  # the Deadline of the request this thread is making


def _shut(sock: socket.socket) -> None:
    """Wake whatever waits on ``sock`` (a TLS socket too: the plain shutdown, not the TLS one)."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


def _watched(sock: Any) -> None:
    deadline: Deadline | None = getattr(CURRENT, "deadline", None)
    if deadline is not None and isinstance(sock, socket.socket):
        deadline.watch(sock)


@functools.cache
def watching_pools() -> tuple[Any, Any]:
    """Connection pools whose connections put their sockets under the current request's deadline."""
    import urllib3
    from urllib3.connection import HTTPConnection, HTTPSConnection

    class WatchedHttp(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            sock = super()._new_conn()
            _watched(sock)  # the TCP connect is bounded; this covers the TLS handshake after it
            return sock

        def getresponse(self) -> Any:
            _watched(self.sock)
            return super().getresponse()

    class WatchedHttps(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            sock = super()._new_conn()
            _watched(sock)
            return sock

        def getresponse(self) -> Any:
            _watched(self.sock)
            return super().getresponse()

    class HttpPool(urllib3.HTTPConnectionPool):
        ConnectionCls = WatchedHttp

    class HttpsPool(urllib3.HTTPSConnectionPool):
        ConnectionCls = WatchedHttps

    return HttpPool, HttpsPool
