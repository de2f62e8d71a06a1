"""A tiny HTTP server run inside a lab host, standing in for a NodePort such as ingress-nginx's.

    python3 http_stub.py PORT NODE_NAME [VHOST ...]

Answers ``200 OK`` with the body ``NODE_NAME\\n`` when the request's Host header (port stripped)
is one of the VHOSTs, ``404`` otherwise; with no VHOST given, every Host gets ``200``. Prints
``ready`` on stdout once the socket listens, then writes only to stderr (its log).
"""

from __future__ import annotations

import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main(argv: list[str]) -> None:
    port, node, vhosts = int(argv[1]), argv[2], frozenset(argv[3:])

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, with_body: bool) -> None:
            host = (self.headers.get("Host") or "").rsplit(":", 1)[0].lower()
            ok = not vhosts or host in vhosts
            body = f"{node}\n".encode() if ok else b"not found\n"
            self.send_response(200 if ok else 404)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - name fixed by http.server
            self._answer(with_body=True)

        def do_HEAD(self) -> None:  # noqa: N802 - name fixed by http.server
            self._answer(with_body=False)

    ThreadingHTTPServer.daemon_threads = True
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv)
