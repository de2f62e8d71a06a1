"""Inside the source lab host, for the iptables/nft verdict differential tests: one packet per request.

Run with any python3 inside the host's namespaces; one JSON request per line on stdin, one JSON
answer per line on stdout:

    {"proto": "udp"|"tcp", "src": address, "sport": port, "dst": address, "dport": port} → {"sent": true}

UDP sends one datagram; TCP one SYN (a non-blocking connect, closed at once: a socket closed in
SYN-SENT sends nothing more, so the target sees exactly one packet per request).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys


def send(req: dict) -> None:
    kind = socket.SOCK_STREAM if req["proto"] == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((req["src"], req["sport"]))
        if kind == socket.SOCK_DGRAM:
            sock.sendto(b"kbf", (req["dst"], req["dport"]))
        else:
            sock.setblocking(False)
            code = sock.connect_ex((req["dst"], req["dport"]))
            if code != errno.EINPROGRESS:  # the SYN never left: say so rather than let the target wait for it
                raise OSError(code, os.strerror(code))


def main() -> None:
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        try:
            send(json.loads(line))
            print(json.dumps({"sent": True}), flush=True)
        except (OSError, ValueError, KeyError) as e:
            print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)


if __name__ == "__main__":
    main()
