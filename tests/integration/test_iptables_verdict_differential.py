"""diagnose's iptables verdict against the kernel's, packet by packet (see tests/lab/filter_differential.py).

Rule sets are generated (fixed seed) from the match forms operators' INPUT chains use: source and
destination addresses and networks, negated or not; address ranges (iprange); interfaces, exact,
``+`` wildcards and negated; protocols; destination and source ports, single, ranges (``a:b``,
``:b``, ``a:``) and multiport lists, negated or not; TCP flags (``--syn``, ``--tcp-flags``);
conntrack and state matches; addrtype; comments; ACCEPT, DROP, REJECT, LOG; jumps and gotos into
user chains that RETURN or decide. Each set is loaded into a lab host's iptables with
``iptables-restore`` (the nft and the legacy backend in turn) and read back with ``iptables-save``
as diagnose's capture reads it. For each probe (UDP and TCP, from four sources on two interfaces,
to ports in and around the rules' ports) :func:`keybuzz_fix.checks.diagnose.filters.iptables_verdict`
must name the rule, or the policy, that the kernel's counters show decided the packet.

``KBF_IPTABLES_DIFFERENTIAL_SETS`` changes the number of rule sets (200 by default).
"""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Callable, Iterator

import pytest

from keybuzz_fix.checks.diagnose.filters import Flow, iptables_verdict
from keybuzz_fix.hosts.flannel.capture import Tables
from tests.lab.filter_differential import PORTS, SEED, Topology, iptables_counters, lab_topology, probes
from tests.lab.hosts import Lab

pytestmark = pytest.mark.integration
SETS = int(os.environ.get("KBF_IPTABLES_DIFFERENTIAL_SETS", "200"))


@pytest.fixture(scope="module")
def topology(lab_factory: Callable[..., Lab]) -> Iterator[Topology]:
    with lab_topology(lab_factory, "ipt") as topo:
        yield topo


def _ports(rng: random.Random) -> tuple[str, str]:
    """A port spec as iptables takes it for --dport/--sport, and for multiport."""
    a, b = sorted(rng.sample(PORTS, 2))
    single = str(rng.choice(PORTS))
    return (
        rng.choice((single, f"{a}:{b}", f":{b}", f"{a}:", f"{a - 1}:{a + 1}", f"{b + 1}:65535")),
        rng.choice((f"{a},{b}", f"{a}:{b},{rng.choice(PORTS)}", f"{single},{a - 1}:{a}")),
    )


def _match(rng: random.Random, t: str) -> str:
    """A random conjunction of matches, as an operator would write it."""
    parts: list[str] = []
    neg = lambda: "! " if rng.random() < 0.25 else ""  # noqa: E731
    if rng.random() < 0.4:
        parts.append(
            neg()
            + "-s "
            + rng.choice(
                ("198.19.1.10", "198.19.1.0/24", "198.19.2.0/24", "198.18.0.0/15", "10.0.0.0/8", "198.19.1.128/25")
            )
        )
    if rng.random() < 0.2:
        parts.append(neg() + "-d " + rng.choice((t, "198.19.2.1", "198.19.2.0/24")))
    if rng.random() < 0.1:
        ranges = ("198.19.1.0-198.19.1.100", "198.19.1.150-198.19.2.20", "198.18.0.0-198.18.0.255")
        parts.append(f"-m iprange {neg()}--src-range {rng.choice(ranges)}")
    if rng.random() < 0.35:
        parts.append(neg() + "-i " + rng.choice(("eth0", "enp7s0", "eth+", "enp+", "lo", "ens+")))
    proto = rng.choice((None, "tcp", "udp", "udp", "tcp", "icmp"))
    if proto:
        parts.append(f"-p {proto}")
    if proto in ("tcp", "udp"):
        spec, multi = _ports(rng)
        r = rng.random()
        if r < 0.4:
            parts.append(f"{neg()}--dport {spec}")
        elif r < 0.6:
            parts.append(f"-m multiport {neg()}--dports {multi}")
        elif r < 0.7:
            parts.append(f"{neg()}--sport {rng.choice(('53', '20000:29999', '30000:65535', '1024:'))}")
        elif r < 0.8 and proto == "tcp":
            flags = (
                "--syn",
                "--tcp-flags SYN,ACK SYN",
                "--tcp-flags ALL NONE",
                "--tcp-flags SYN,RST SYN,RST",
                "--tcp-flags ACK ACK",
            )
            parts.append(neg() + rng.choice(flags))
    r = rng.random()
    if r < 0.15:
        parts.append(
            "-m conntrack "
            + neg()
            + "--ctstate "
            + rng.choice(("NEW", "ESTABLISHED,RELATED", "INVALID", "NEW,ESTABLISHED"))
        )
    elif r < 0.2:
        parts.append("-m state --state " + rng.choice(("NEW", "RELATED,ESTABLISHED")))
    elif r < 0.25:
        parts.append("-m addrtype --dst-type " + rng.choice(("LOCAL", "BROADCAST", "UNICAST")))
    if rng.random() < 0.15:
        parts.append('-m comment --comment "kbf test"')
    return " ".join(parts)


def ruleset(rng: random.Random, t: str) -> str:
    """One ``iptables-restore`` file of the filter table: INPUT's policy and rules, user chains."""
    chains = [f"KBF-{i}" for i in range(rng.randint(0, 2))]
    lines = [
        "*filter",
        f":INPUT {rng.choice(('ACCEPT', 'DROP'))} [0:0]",
        ":FORWARD ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
    ]
    lines += [f":{c} - [0:0]" for c in chains]

    def target(own: str | None) -> str:
        pool = ["ACCEPT", "DROP", "REJECT", "LOG"] + [c for c in chains if c != own and (own is None or c > own)]
        if own is not None:
            pool.append("RETURN")
        chosen = rng.choice(pool)
        if chosen.startswith("KBF-") and rng.random() < 0.3:
            return f"-g {chosen}"
        return f"-j {chosen}"

    for _ in range(rng.randint(1, 6)):
        lines.append(f"-A INPUT {_match(rng, t)} {target(None)}")
    for c in chains:
        for _ in range(rng.randint(0, 3)):
            lines.append(f"-A {c} {_match(rng, t)} {target(c)}")
    return "\n".join([*lines, "COMMIT", ""])


def test_iptables_verdicts_are_the_kernels(topology: Topology) -> None:
    topo, t = topology, topology.t
    rng = random.Random(SEED)
    path = t.workdir / "rules.v4"
    compared = refused = 0
    for n in range(SETS):
        backend, other = ("nft", "legacy") if n % 2 == 0 else ("legacy", "nft")
        text = ruleset(rng, t.ip)
        path.write_text(text)
        t.run(f"iptables-{other} -F && iptables-{other} -X && iptables-{other} -P INPUT ACCEPT")
        loaded = t.run(f"iptables-{backend}-restore < {path}", check=False)
        if loaded.returncode != 0:  # a combination iptables refuses (e.g. REJECT --reject-with on udp): skip
            refused += 1
            continue
        t.run("conntrack -F", check=False)
        listing = t.run(f"iptables-{backend}-save -t filter").stdout
        tables = Tables(backend, tuple(listing.splitlines()), (), None)
        save = f"iptables-{backend}-save"
        counters = iptables_counters(t, save)
        for probe in probes(topo, rng, 8):
            key, counters = topo.decided(probe, functools.partial(iptables_counters, t, save), counters)
            flow = Flow(
                probe.source.address, probe.proto, probe.dport, probe.source.iface, probe.source.dst, sport=probe.sport
            )
            got = iptables_verdict(tables, flow)
            if key.startswith("policy "):
                real = (tables.policy("INPUT"), ":INPUT")
                model = (got.verdict, got.line.split()[0])
            else:
                line = key.split(" ", 1)[1]
                real = (line.rsplit("-j ", 1)[1].split()[0], line)
                model = (got.verdict, got.line)
            assert model == real, f"{probe.describe()}\nloaded:\n{text}\nlisted:\n{listing}"
            compared += 1
    t.run("iptables-nft -F; iptables-nft -X; iptables-legacy -F; iptables-legacy -X", check=False)
    print(f"\niptables differential: {compared} probes of {SETS - refused} rule sets compared, {refused} refused")
    assert refused <= SETS * 0.2, (compared, refused)
