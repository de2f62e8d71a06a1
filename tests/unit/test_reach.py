"""The worker-to-worker reach probe: its script under a real sh, against loopback ports, and its parser."""

import socket
import subprocess

from keybuzz_fix.hosts.reach import Paths, Reach, Target, parse_reach, reach_probe


def test_the_probe_tells_open_from_refused_under_sh() -> None:
    with socket.socket() as listening, socket.socket() as closed:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        closed.bind(("127.0.0.1", 0))  # bound, not listening: a connection is refused
        targets = [
            Target("a", "127.0.0.1", listening.getsockname()[1], "open one"),
            Target("b", "127.0.0.1", closed.getsockname()[1], "closed one"),
        ]
        out = subprocess.run(["sh", "-c", reach_probe(targets, 2)], capture_output=True, text=True, timeout=20)
    paths = Paths.parsed("me", targets, out.stdout)
    assert [(t.what, outcome) for t, outcome, _ in paths.outcomes] == [
        ("open one", Reach.OPEN),
        ("closed one", Reach.REFUSED),
    ]


def test_parse_reach_reads_each_outcome_and_ignores_the_rest() -> None:
    text = (
        "motd noise\n@@keybuzz-fix@@ reach\n198.18.0.12 80 open\n198.18.0.12 8080 timeout\n"
        "198.18.0.13 443 refused\n198.18.0.13 3000 error connect: No route to host\n198.18.0.14 80 untested\ngarbage\n"
    )
    assert parse_reach(text) == {
        ("198.18.0.12", 80): (Reach.OPEN, ""),
        ("198.18.0.12", 8080): (Reach.TIMEOUT, ""),
        ("198.18.0.13", 443): (Reach.REFUSED, ""),
        ("198.18.0.13", 3000): (Reach.ERROR, "connect: No route to host"),
        ("198.18.0.14", 80): (Reach.UNTESTED, ""),
    }


def test_a_target_the_probe_did_not_report_is_untested_never_open() -> None:
    t = Target("b", "198.18.0.12", 80, "ingress-nginx HTTP host port")
    (only,) = Paths.parsed("a", [t], "@@keybuzz-fix@@ reach\n").outcomes
    assert only[1] is Reach.UNTESTED
