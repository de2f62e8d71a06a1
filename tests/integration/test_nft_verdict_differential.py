"""diagnose's nftables verdict against the kernel's, packet by packet (see tests/lab/filter_differential.py).

Rule sets are generated (fixed seed): tables of the ip and inet families with base chains on the
input hook at different priorities, with and without a drop policy, and regular chains; rules of
the match forms firewalld and operators write: ``ip saddr``/``daddr`` (addresses, networks,
anonymous sets, ``!=``), ``iifname``/``iif`` (exact, ``*`` wildcards, sets, ``!=``),
``tcp``/``udp``/``th`` ``dport``/``sport`` (single ports, ranges, sets, ``!=``), ``tcp flags`` in
its forms, other ``tcp``/``udp`` fields, ``meta l4proto``, ``ip protocol``, ``ct state``; ending in
accept, drop, reject, log, jump, goto or return. Each set is loaded with ``nft -f`` into a lab host
and listed back with ``nft list ruleset``, as diagnose's capture reads it. The kernel's own trace
is the answer (``meta nftrace set 1`` on prerouting, ``nft monitor trace``): for each probe (UDP
and TCP from four sources on two interfaces) it names the rule whose verdict dropped or rejected
the packet, or the chain whose policy dropped it, or shows it reaching a last base chain (priority
1000) that no earlier chain stopped it from reaching.
:func:`keybuzz_fix.checks.diagnose.nftables.nft_verdict` must say the same.

``KBF_NFT_VERDICT_DIFFERENTIAL_SETS`` changes the number of rule sets (150 by default).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator

import pytest

from keybuzz_fix.checks.diagnose.filters import Flow
from keybuzz_fix.checks.diagnose.nftables import nft_verdict
from tests.lab.filter_differential import PORTS, SEED, Probe, Topology, Tracer, lab_topology, probes, uncounted
from tests.lab.hosts import Lab

pytestmark = pytest.mark.integration
SETS = int(os.environ.get("KBF_NFT_VERDICT_DIFFERENTIAL_SETS", "150"))
END = "inet kbf-end/end"  # the last base chain on input: what reaches it was dropped by none


@pytest.fixture(scope="module")
def topology(lab_factory: Callable[..., Lab]) -> Iterator[Topology]:
    with lab_topology(lab_factory, "nftv") as topo:
        yield topo


def _ports(rng: random.Random) -> str:
    a, b = sorted(rng.sample(PORTS, 2))
    return rng.choice(
        (
            str(rng.choice(PORTS)),
            f"{a}-{b}",
            f"{{ {a}, {b} }}",
            f"{{ {a}-{b}, {rng.choice(PORTS)} }}",
            f"{a - 1}-{a + 1}",
        )
    )


def _match(rng: random.Random, t: str) -> str:
    parts: list[str] = []
    neg = lambda: "!= " if rng.random() < 0.25 else ""  # noqa: E731
    if rng.random() < 0.4:
        nets = ("198.19.1.10", "198.19.1.0/24", "198.19.2.0/24", "198.18.0.0/15", "10.0.0.0/8", "198.19.1.128/25")
        value = rng.choice((*nets, f"{{ {rng.choice(nets)}, {rng.choice(nets)} }}"))
        parts.append(f"ip saddr {neg()}{value}")
    if rng.random() < 0.15:
        parts.append(f"ip daddr {neg()}{rng.choice((t, '198.19.2.1', '198.19.2.0/24'))}")
    if rng.random() < 0.35:
        name = rng.choice(('"eth0"', '"enp7s0"', '"eth*"', '"enp*"', '"lo"', '{ "eth0", "lo" }'))
        parts.append(f"iifname {neg()}{name}")
    elif rng.random() < 0.1:
        parts.append(f'iif {neg()}"{rng.choice(("eth0", "enp7s0", "lo"))}"')
    r = rng.random()
    if r < 0.45:
        parts.append(f"{rng.choice(('tcp', 'udp', 'udp', 'th'))} dport {neg()}{_ports(rng)}")
    elif r < 0.55:
        parts.append(f"{rng.choice(('tcp', 'udp'))} sport {neg()}{rng.choice(('53', '20000-29999', '30000-65535'))}")
    elif r < 0.65:
        parts.append(f"meta l4proto {rng.choice(('tcp', 'udp', '{ tcp, udp }', 'icmp'))}")
    elif r < 0.7:
        parts.append(f"ip protocol {rng.choice(('tcp', 'udp'))}")
    elif r < 0.8:
        flags = (
            "tcp flags syn",
            "tcp flags == syn",
            "tcp flags != syn",
            "tcp flags & (fin | syn | rst | ack) == syn",
            "tcp flags & (syn | ack) != syn",
            "tcp flags ack",
            "tcp flags { syn, ack }",
            "tcp flags syn,ack",
            "tcp flags == syn | ack",
            "udp length >= 8",  # every datagram: only the protocol decides (the model reads no length)
            "tcp window != 0",  # every SYN of Linux: likewise
        )
        parts.append(rng.choice(flags))
    if rng.random() < 0.2:
        parts.append(f"ct state {neg()}{rng.choice(('new', 'established,related', 'invalid', '{ new, established }'))}")
    return " ".join(parts)


def ruleset(rng: random.Random, t: str) -> str:
    """One ``nft -f`` file: 1–2 tables with base chains on input (distinct priorities) and regular chains."""
    text: list[str] = []
    priorities = rng.sample((-300, -150, -5, 0, 5, 10, 50, 100), 4)
    for ti in range(rng.randint(1, 2)):
        family = rng.choice(("ip", "inet"))
        regular = [f"c{i}" for i in range(rng.randint(0, 2))]
        text.append(f"table {family} kbf{ti} {{")
        for ci in range(rng.randint(1, 2)):
            policy = rng.choice(("accept", "drop"))
            text += [
                f"  chain base{ci} {{",
                f"    type filter hook input priority {priorities.pop()}; policy {policy};",
            ]
            text += [f"    {_rule(rng, t, regular, None)}" for _ in range(rng.randint(1, 5))]
            text.append("  }")
        for ci, chain in enumerate(regular):
            text.append(f"  chain {chain} {{")
            text += [f"    {_rule(rng, t, regular[ci + 1 :], chain)}" for _ in range(rng.randint(0, 3))]
            text.append("  }")
        text.append("}")
    text += [
        "table inet kbf-trace {",
        "  chain pre {",
        "    type filter hook prerouting priority -350; policy accept;",
        "    meta nftrace set 1",
        "  }",
        "}",
        "table inet kbf-end {",
        "  chain end {",
        "    type filter hook input priority 1000; policy accept;",
        "    counter",
        "  }",
        "}",
    ]
    return "\n".join(text) + "\n"


def _rule(rng: random.Random, t: str, callees: list[str], own: str | None) -> str:
    counter = "counter " if rng.random() < 0.5 else ""
    verdicts = [f"{counter}accept", f"{counter}drop", f"{counter}reject", 'log prefix "kbf "', "counter"]
    verdicts += [f"{rng.choice(('jump', 'goto'))} {c}" for c in callees]
    if own is not None:
        verdicts.append("return")
    return f"{_match(rng, t)} {rng.choice(verdicts)}".strip()


def test_nft_verdicts_are_the_kernels(topology: Topology) -> None:
    topo, t = topology, topology.t
    rng = random.Random(SEED)
    path = t.workdir / "rules.nft"
    compared = refused = 0
    t.run("iptables-legacy -F; iptables-legacy -X", check=False)
    for _ in range(SETS):
        text = ruleset(rng, t.ip)
        path.write_text(text)
        if t.run(f"nft flush ruleset && nft -f {path}", check=False).returncode != 0:
            refused += 1  # a combination this nft refuses: nothing to compare
            continue
        t.run("conntrack -F", check=False)
        listing = t.run("nft list ruleset").stdout
        tracer = Tracer(t, topo.sender, Probe(topo.sources[2], 50000, "udp", 9))
        try:
            for probe in probes(topo, rng, 8):
                topo.sender.ask(probe.wire())
                real = tracer.fate(probe, END)
                flow = Flow(
                    probe.source.address,
                    probe.proto,
                    probe.dport,
                    probe.source.iface,
                    probe.source.dst,
                    sport=probe.sport,
                )
                got = nft_verdict(listing.splitlines(), flow)
                model = (got.verdict, uncounted(got.line)) if got is not None else None
                assert model == real, (
                    f"{probe.describe()}: model {model}, kernel {real}\nloaded:\n{text}\nlisted:\n{listing}"
                )
                compared += 1
        finally:
            tracer.close()
    t.run("nft flush ruleset")
    print(f"\nnft verdict differential: {compared} probes of {SETS - refused} rule sets compared, {refused} refused")
    assert refused <= SETS * 0.2, (compared, refused)
