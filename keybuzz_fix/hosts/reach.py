"""Which other workers' ports a worker can open a TCP connection to: the paths ingress-nginx takes.

kube-proxy forwards a NodePort connection to the ingress controller on any worker, and
ingress-nginx proxies to the app on any worker; each hop is a TCP connection from one worker's
private address to another worker's host port. This fact is gathered *on* a worker (over SSH), so
that the connection leaves from where ingress-nginx's would, through the same firewalls. One round
trip: every target is tried at once, each bounded by ``timeout`` seconds.

The probe uses bash's ``/dev/tcp`` under coreutils' ``timeout`` where bash exists (every Ubuntu and
Debian node), else ``nc -z``; with neither, the target is "untested" — never counted as open.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from keybuzz_fix.hosts.sections import section_header, split_sections
from keybuzz_fix.inventory import Host

SECTION = "reach"


class Reach(str, Enum):
    """What a connection attempt from one worker to another's port did."""

    OPEN = "open"
    TIMEOUT = "timed out"  # nothing came back: a firewall dropped it (UFW's default deny does)
    REFUSED = "refused"  # the host answered with a reset: no firewall in the way, nothing listens
    ERROR = "error"  # no route, unreachable, …
    UNTESTED = "untested"  # neither bash nor nc on the worker


@dataclass(frozen=True)
class Target:
    """A port on another worker: ``address:port``, and what it is for (``keybuzz-api host port``)."""

    host: str
    address: str
    port: int
    what: str


def reach_probe(targets: Sequence[Target], timeout: float) -> str:
    """Return the script that tries every target at once from the worker it runs on.

    Prints, in its section, one line per target: ``ADDRESS PORT OUTCOME [DETAIL]``.
    """
    seconds = max(1, int(round(timeout)))
    lines = [
        section_header(SECTION),
        "kbf_reach() {",
        "  if command -v bash >/dev/null 2>&1 && command -v timeout >/dev/null 2>&1; then",
        f'    out=$(timeout {seconds} bash -c \'exec 3<>/dev/tcp/"$1"/"$2"\' kbf "$1" "$2" 2>&1); rc=$?',
        '    [ $rc = 124 ] && { echo "$1 $2 timeout"; return; }',
        "  elif command -v nc >/dev/null 2>&1; then",
        f'    out=$(nc -z -w {seconds} "$1" "$2" 2>&1); rc=$?',
        '  else echo "$1 $2 untested"; return; fi',
        '  if [ $rc = 0 ]; then echo "$1 $2 open"; return; fi',
        '  case "$out" in',
        '    *[Rr]efused*) echo "$1 $2 refused" ;;',
        '    *[Tt]imed\\ out*) echo "$1 $2 timeout" ;;',
        "    *) echo \"$1 $2 error $(printf %s \"$out\" | tr '\\n' ' ' | cut -c1-120)\" ;;",
        "  esac",
        "}",
    ]
    lines += [f"kbf_reach {shlex.quote(t.address)} {t.port} &" for t in targets]
    lines.append("wait")
    return "\n".join(lines)


_OUTCOMES = {"open": Reach.OPEN, "timeout": Reach.TIMEOUT, "refused": Reach.REFUSED, "untested": Reach.UNTESTED}


def parse_reach(text: str) -> dict[tuple[str, int], tuple[Reach, str]]:
    """Parse the probe's output into ``(address, port) -> (outcome, detail)``; a missing line is absent."""
    out: dict[tuple[str, int], tuple[Reach, str]] = {}
    for line in split_sections(text).get(SECTION, []):
        words = line.split(maxsplit=3)
        if len(words) < 3 or not (words[1].isascii() and words[1].isdigit()):
            continue
        outcome = _OUTCOMES.get(words[2], Reach.ERROR)
        detail = words[3].strip() if len(words) > 3 else ""
        out[(words[0], int(words[1]))] = (outcome, detail)
    return out


def targets_for(source: Host, workers: Sequence[Host], ports: Sequence[tuple[int, str]]) -> list[Target]:
    """Every other worker's ``ports`` (``(port, what)``), as seen from worker ``source``."""
    return [
        Target(w.hostname, w.private_ip, port, what)
        for w in workers
        if w.hostname != source.hostname
        for port, what in ports
    ]


@dataclass(frozen=True)
class Paths:
    """What one worker saw trying every target: each target's outcome and detail."""

    source: str
    outcomes: tuple[tuple[Target, Reach, str], ...]

    @classmethod
    def parsed(cls, source: str, targets: Sequence[Target], text: str) -> Paths:
        """Match the probe's output to the targets; a target the output does not mention was not tested."""
        seen = parse_reach(text)
        return cls(
            source,
            tuple((t, *seen.get((t.address, t.port), (Reach.UNTESTED, "no answer from the probe"))) for t in targets),
        )
