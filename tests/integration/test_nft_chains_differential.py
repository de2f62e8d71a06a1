"""diagnose's reading of ``nft list ruleset`` against what the real nft prints.

``diagnose`` judges nftables' own base chains (firewalld's, an operator's) from the capture's
``nft list ruleset`` (:func:`keybuzz_fix.checks.diagnose.nftables.nft_chains`). Here rule sets are
generated — several tables of the ip, ip6 and inet families (some named as iptables-nft names
its own, which diagnose leaves to the iptables reading), named sets with elements, base chains of
every filter hook with numeric and named priorities, with and without a policy, regular chains,
rules with counters, comments, anonymous sets and jumps — loaded into a lab host's own nft, and
listed back by it; the parse must find exactly the chains that were loaded, each with its hook,
its policy (nft's default, accept, when none is set), its priority (named or numbered) and its number
of rules.

``KBF_NFT_DIFFERENTIAL_SETS`` changes the number of rule sets (120 by default, fixed seed).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from keybuzz_fix.checks.diagnose.nftables import nft_chains
from tests.lab.hosts import HostSpec, Lab, LabHost

pytestmark = pytest.mark.integration
SETS = int(os.environ.get("KBF_NFT_DIFFERENTIAL_SETS", "120"))
SEED = 20261130
HOOKS = ("prerouting", "input", "forward", "output", "postrouting")
PRIORITIES = {  # as loaded → its value (nft(8), CHAINS: the standard priority names of ip, ip6 and inet)
    "filter": 0,
    "raw": -300,
    "mangle": -150,
    "security": 50,
    "0": 0,
    "-150": -150,
    "10": 10,
    "filter - 5": -5,
    "filter + 3": 3,
    "mangle - 1": -151,
}
RULES = (
    "counter accept",
    "tcp dport 8472 drop",
    "udp dport 8472 counter drop",
    "ip saddr 198.18.0.0/24 accept",
    'meta l4proto udp accept comment "vxlan"',
    "ct state established,related accept",
    "tcp dport { 80, 443, 31695 } accept",
    'iifname "eth0" counter packets 0 bytes 0 reject',
)


@dataclass(frozen=True)
class Loaded:
    """A chain as it was loaded: where, its hook (None: a regular chain), its policy and how many rules."""

    key: str
    hook: str | None
    policy: str
    rules: int
    priority: int | None = None


@pytest.fixture(scope="module")
def host(lab_factory: Callable[..., Lab]) -> Iterator[LabHost]:
    with lab_factory([HostSpec("nft-lister", ufw_active=False, http_listener=False)]) as lab:
        yield lab.host("nft-lister")


def ruleset(rng: random.Random) -> tuple[str, list[Loaded]]:
    """One generated ``nft -f`` file and the chains diagnose must read from its listing."""
    text: list[str] = []
    wanted: list[Loaded] = []
    for t in range(rng.randint(1, 3)):
        family = rng.choice(("ip", "ip6", "inet"))
        name = rng.choice(("fw", "filter", f"t{t}", "nat", "firewalld", "mangle"))
        if any(line.startswith(f"table {family} {name} ") for line in text):
            continue
        own = family in ("ip", "ip6") and name in ("filter", "nat", "mangle")  # iptables-nft's names
        text.append(f"table {family} {name} {{")
        if rng.random() < 0.5:
            addr = "ipv4_addr" if family != "ip6" else "ipv6_addr"
            elements = "198.18.0.1, 198.18.0.2" if family != "ip6" else "fd00::1, fd00::2"
            text += [f"  set allowed{t} {{", f"    type {addr}", f"    elements = {{ {elements} }}", "  }"]
        regular = [f"c{i}" for i in range(rng.randint(0, 2))]
        for i in range(rng.randint(1, 3)):
            chain = f"base{i}"
            hook = rng.choice(HOOKS)
            policy = rng.choice((None, "accept", "drop"))
            rules = [r for r in rng.sample(RULES, rng.randint(0, 3)) if family != "ip6" or "ip saddr" not in r]
            if regular and rng.random() < 0.5:
                rules.append(f"jump {rng.choice(regular)}")
            priority = rng.choice(sorted(PRIORITIES))
            head = f"    type filter hook {hook} priority {priority};"
            text += [f"  chain {chain} {{", head + (f" policy {policy};" if policy else "")]
            text += [f"    {r}" for r in rules] + ["  }"]
            if not own:
                wanted.append(
                    Loaded(f"{family} {name}/{chain}", hook, policy or "accept", len(rules), PRIORITIES[priority])
                )
        for chain in regular:
            rules = [r for r in rng.sample(RULES, rng.randint(0, 2)) if family != "ip6" or "ip saddr" not in r]
            text += [f"  chain {chain} {{"] + [f"    {r}" for r in rules] + ["  }"]
            if not own:
                wanted.append(Loaded(f"{family} {name}/{chain}", None, "accept", len(rules)))
        text.append("}")
    return "\n".join(text) + "\n", wanted


def test_nft_listing_is_read_as_nft_loaded_it(host: LabHost) -> None:
    rng = random.Random(SEED)
    path = host.workdir / "rules.nft"
    compared = refused = 0
    for _ in range(SETS):
        text, wanted = ruleset(rng)
        path.write_text(text)
        loaded = host.run(f"nft flush ruleset && nft -f {path}", check=False)
        if loaded.returncode != 0:  # a combination this kernel's nft refuses: nothing to compare
            refused += 1
            continue
        listing = host.run("nft list ruleset").stdout
        read = nft_chains(listing.splitlines())
        got = {k: Loaded(k, c.hook, c.policy, len(c.rules), c.priority) for k, c in read.items()}
        assert got == {w.key: w for w in wanted}, f"loaded:\n{text}\nlisted:\n{listing}"
        compared += 1
    host.run("nft flush ruleset")
    print(f"\nnft differential: {compared} rule sets compared, {refused} refused by nft")
    assert compared >= SETS * 0.8, (compared, refused)
