"""A CoreDNS stand-in for the overlay fault lab: answers every A query with one address, over UDP.

    python3 -I dns_stub.py PORT ANSWER

Prints "ready" once bound. It runs inside a pod's network namespace, so the answer leaves from
the pod's address: a reply that reaches the client from any other address is what br_netfilter
off looks like.
"""

from __future__ import annotations

import socket
import sys


def main() -> None:
    """Serve until killed."""
    port, answer = int(sys.argv[1]), socket.inet_aton(sys.argv[2])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    print("ready", flush=True)
    while True:
        query, peer = sock.recvfrom(4096)
        if len(query) < 12:
            continue
        end = query.index(b"\0", 12) + 5  # the question: name, type, class
        header = query[:2] + b"\x81\x80" + query[4:6] + b"\x00\x01\x00\x00\x00\x00"
        record = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x05\x00\x04" + answer
        sock.sendto(header + query[12:end] + record, peer)


if __name__ == "__main__":
    main()
