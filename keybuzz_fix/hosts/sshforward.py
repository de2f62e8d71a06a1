"""Local ports forwarded over an SSH connection (``ssh -L``), for the API server behind a node.

Each forward listens on 127.0.0.1 only and opens one ``direct-tcpip`` channel per connection it
accepts, for as long as its session is open.
"""

from __future__ import annotations

import select
import socket
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import paramiko


class _Forward:
    """A local port forwarded over an SSH connection to an address the remote end reaches (``ssh -L``)."""

    def __init__(self, transport: paramiko.Transport, host: str, port: int, label: str) -> None:
        self._transport, self._dest, self._label = transport, (host, port), label
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = int(self._listener.getsockname()[1])
        self._closed = False
        threading.Thread(target=self._accept, name=f"forward-{label}", daemon=True).start()

    def _accept(self) -> None:
        import paramiko

        while not self._closed:
            try:
                conn, peer = self._listener.accept()
            except OSError:
                return
            try:
                chan = self._transport.open_channel("direct-tcpip", self._dest, peer, timeout=30)
            except (paramiko.SSHException, OSError, EOFError):
                conn.close()
                continue
            threading.Thread(target=_pump, args=(conn, chan), name=f"forward-{self._label}", daemon=True).start()

    def close(self) -> None:
        """Stop listening (connections already made end with the SSH connection)."""
        self._closed = True
        self._listener.close()


def _pump(conn: socket.socket, chan: paramiko.Channel) -> None:
    """Copy bytes both ways between a local socket and a channel until either side closes."""
    try:
        while True:
            watched: list[Any] = [conn, chan]
            ready, _, _ = select.select(watched, [], [], 60)
            if conn in ready:
                data = conn.recv(65536)
                if not data:
                    break
                chan.sendall(data)
            if chan in ready:
                data = chan.recv(65536)
                if not data:
                    break
                conn.sendall(data)
    except OSError:
        pass
    finally:
        chan.close()
        conn.close()
