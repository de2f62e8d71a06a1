"""How a node's filters judge one flow: UFW's verdict, and iptables' (either backend) (pure code).

:func:`ufw_verdict` is the one place the diagnosis asks UFW, and it asks the UFW verdict model
(:func:`keybuzz_fix.hosts.ufw.verdict.judge`, proven against real packets): it takes the rules UFW
judges by and a flow, and returns the verdict and the rule (or policy) that decided it.

:func:`iptables_verdict` walks one backend's ``filter`` table as ``iptables-save`` printed it: the
rules of a chain in order, jumps followed, the built-in chain's policy at the end.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from keybuzz_fix.hosts.flannel.capture import Tables
from keybuzz_fix.hosts.ufw import verdict
from keybuzz_fix.hosts.ufw.rules import ANY, UfwRule
from keybuzz_fix.hosts.ufw.ruleset import Ruleset

TERMINAL = ("ACCEPT", "DROP", "REJECT")


@dataclass(frozen=True)
class Flow:
    """A new flow arriving at a node: from where, to where, what, on which interface."""

    src: str | None
    proto: str  # tcp, udp, icmp
    dport: int | None
    iface: str | None
    dst: str | None = None
    chain: str = "INPUT"

    def describe(self) -> str:
        """Return the flow in a few words (``udp/8472 from 10.0.0.3 on enp7s0``)."""
        what = f"{self.proto}/{self.dport}" if self.dport else self.proto
        to = f" to {self.dst}" if self.dst else ""
        on = f" on {self.iface}" if self.iface else ""
        return f"{what} from {self.src or 'any'}{to}{on} ({self.chain})"


@dataclass(frozen=True)
class UfwVerdict:
    """UFW's answer for one flow, and what decided it."""

    allowed: bool
    decided_by: str  # the rule (where it sits in user.rules / user6.rules, as ufw prints it) or the policy
    rule: UfwRule | None = None
    throttled: bool = False


def ufw_verdict(ruleset: Ruleset, flow: Flow) -> UfwVerdict:
    """Return UFW's verdict on an incoming flow, from the UFW verdict model (:mod:`keybuzz_fix.hosts.ufw.verdict`).

    The model walks what the kernel walks: the flow's family only (an IPv4 flow never meets
    user6.rules), before.rules, the first matching user rule, the default policy. Only the part of
    the flow from its source counts. ``limit`` lets a TCP flow in (throttled); a UDP stream (VXLAN,
    DNS) is a new connection on every packet to conntrack, so UFW lets 5 in per 30 s: not allowed.
    Routed traffic (FORWARD) is left to the FORWARD check.
    """
    if flow.chain == "FORWARD":
        return UfwVerdict(True, "not judged here (routed traffic: see the FORWARD policy)")
    if flow.proto == "icmp":
        if not ruleset.active:
            return UfwVerdict(True, "ufw is inactive: it loads no rule and no policy")
        return UfwVerdict(True, "ufw's before.rules accept ICMP echo requests")
    family = _family(flow.src)
    model = verdict.Flow(
        family,
        str(flow.dport) if flow.dport else None,
        flow.proto if flow.proto in ("tcp", "udp") else None,
        source=_in_family(flow.src, family),
        dest=_in_family(flow.dst, family),
        interface=flow.iface,
    )
    judgement = verdict.judge(ruleset, model)
    pieces = judgement.at(model.source) if model.source != ANY else judgement.pieces
    decisions = tuple(dict.fromkeys(p.decision for p in pieces or judgement.pieces))
    verdicts = {d.verdict for d in decisions}
    limited = verdict.Verdict.LIMIT in verdicts
    allowed = verdicts <= {verdict.Verdict.ALLOW, verdict.Verdict.LIMIT} and not (limited and flow.proto == "udp")
    if len(decisions) == 1:
        text = decisions[0].why
        if limited and flow.proto == "udp":
            text += " (limit: a UDP stream is new to conntrack on every packet, 5 get in per 30 s)"
    else:
        text = judgement.describe()
    deciding = next((d for d in decisions if d.verdict is not verdict.Verdict.ALLOW), decisions[0])
    return UfwVerdict(allowed, text, deciding.rule, throttled=limited)


def _family(address: str | None) -> int:
    try:
        return ipaddress.ip_address(address or "").version
    except ValueError:
        return 4


def _in_family(address: str | None, family: int) -> str:
    """Return the address when it is one of ``family`` (the model's ``any`` otherwise: not known)."""
    try:
        return address if address and ipaddress.ip_address(address).version == family else ANY
    except ValueError:
        return ANY


@dataclass(frozen=True)
class IptVerdict:
    """One backend's answer: ACCEPT, DROP, REJECT (or None: not decided), the line that decided it."""

    verdict: str
    line: str
    chain: str


def iptables_verdict(tables: Tables, flow: Flow, skip: Sequence[str] = ()) -> IptVerdict:
    """Walk the built-in chain of ``flow`` in one backend; chains starting with a ``skip`` prefix are not followed."""
    found = _walk(tables, flow.chain, flow, tuple(skip), 0)
    if found is not None:
        return found
    policy = tables.policy(flow.chain) or "ACCEPT"
    return IptVerdict(policy, f":{flow.chain} {policy} (the chain's policy)", flow.chain)


def _walk(tables: Tables, chain: str, flow: Flow, skip: tuple[str, ...], depth: int) -> IptVerdict | None:
    if depth > 10:
        return None
    for line in tables.rules(chain):
        target, matched = _rule(line, flow)
        if not matched or target is None:
            continue
        if target in TERMINAL:
            return IptVerdict(target, line, chain)
        if target == "RETURN":
            return None
        if target.startswith(skip) or target not in _chains(tables):
            continue
        found = _walk(tables, target, flow, skip, depth + 1)
        if found is not None:
            return found
    return None


def _chains(tables: Tables) -> set[str]:
    return {line.split()[0][1:] for line in tables.filter if line.startswith(":")}


def _rule(line: str, flow: Flow) -> tuple[str | None, bool]:
    try:
        words = shlex.split(line)
    except ValueError:
        return None, False
    target = None
    ok = True
    i, neg = 2, False
    while i < len(words):
        w = words[i]
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if w == "!":
            neg, i = True, i + 1
            continue
        hit: bool | None = None
        step = 2
        if w in ("-j", "--jump", "-g", "--goto"):
            target = nxt
        elif w in ("-s", "--source"):
            hit = _in(flow.src, nxt)
        elif w in ("-d", "--destination"):
            hit = _in(flow.dst, nxt)
        elif w in ("-i", "--in-interface"):
            hit = _iface(flow.iface, nxt)
        elif w in ("-o", "--out-interface"):
            hit = None if flow.chain == "FORWARD" else True
        elif w in ("-p", "--protocol"):
            hit = nxt in ("all", "0") or nxt == flow.proto
        elif w in ("--dport", "--destination-port", "--dports", "--destination-ports"):
            hit = flow.dport is not None and _port_in(flow.dport, nxt)
        elif w in ("--ctstate", "--state"):
            hit = "NEW" in nxt.split(",")
        elif w == "--mark":
            hit = False
        elif w == "--match-set":
            hit, step = False, 3
        elif w in ("--physdev-is-bridged", "--physdev-is-in", "--physdev-is-out"):
            hit, step = False, 1
        elif w == "--dst-type":
            hit = (nxt == "LOCAL") == (flow.chain == "INPUT")
        elif w.startswith("-") and (not nxt or nxt.startswith("-") or nxt == "!"):
            step = 1
        if hit is not None:
            if neg:
                hit = not hit
            ok = ok and hit
        neg = False
        i += step
    return target, ok


def _in(address: str | None, net: str) -> bool:
    if address is None:
        return True
    try:
        return ipaddress.ip_address(address) in ipaddress.ip_network(net, strict=False)
    except ValueError:
        return False


def _iface(iface: str | None, pattern: str) -> bool:
    if iface is None:
        return True
    return iface.startswith(pattern[:-1]) if pattern.endswith("+") else iface == pattern


def _port_in(port: int, spec: str) -> bool:
    """Whether ``port`` is in an iptables/nft port spec (``80``, ``80:90``, ``80,443``); damaged parts match none."""
    for part in spec.split(","):
        lo, _, hi = part.partition(":")
        hi = hi or lo
        if all(end.isascii() and end.isdigit() for end in (lo, hi)) and int(lo) <= port <= int(hi):
            return True
    return False


# -- nftables' own tables (firewalld's, or an operator's), not iptables-nft's -------------------------------

_IPTABLES_TABLES = {"filter", "nat", "mangle", "raw", "security"}


@dataclass(frozen=True)
class NftChain:
    """One chain of ``nft list ruleset``: its table, hook and policy (base chains), its rules."""

    table: str
    name: str
    hook: str | None
    policy: str
    rules: tuple[str, ...]


def nft_chains(lines: Sequence[str]) -> dict[str, NftChain]:
    """Parse ``nft list ruleset`` into chains (``family table/chain``), leaving out iptables-nft's own tables."""
    chains: dict[str, NftChain] = {}
    table = chain = None
    hook: str | None = None
    policy = "accept"
    rules: list[str] = []
    depth = 0
    for raw in lines:
        line = raw.strip()
        if line.startswith("table ") and line.endswith("{"):
            words = line.split()
            table = f"{words[1]} {words[2]}" if len(words) >= 4 else words[1]
            depth = 1
        elif line.startswith("chain ") and line.endswith("{") and table:
            chain, hook, policy, rules, depth = line.split()[1], None, "accept", [], 2
        elif line == "}":
            if depth == 2 and table and chain:
                family, _, name = table.partition(" ")
                if not (family in ("ip", "ip6") and name in _IPTABLES_TABLES):
                    chains[f"{table}/{chain}"] = NftChain(table, chain, hook, policy, tuple(rules))
                chain = None
            depth -= 1
        elif chain is not None:
            if line.startswith("type "):
                words = line.replace(";", " ").split()
                hook = _word_after(words, "hook")
                policy = _word_after(words, "policy") or policy
            elif line:
                rules.append(line)
    return chains


def _word_after(words: Sequence[str], key: str) -> str | None:
    """The word after ``key`` (``hook input``, ``policy drop``); None if there is none (a cut-off line)."""
    at = words.index(key) if key in words else len(words)
    return words[at + 1] if at + 1 < len(words) else None


def nft_verdict(lines: Sequence[str], flow: Flow) -> IptVerdict | None:
    """Return the verdict of nftables' own base chains on the flow's hook: the first that drops, else None."""
    chains = nft_chains(lines)
    hook = flow.chain.lower()
    for key, c in chains.items():
        if c.hook != hook:
            continue
        found = _nft_walk(chains, key, flow, 0)
        if found is None:
            found = IptVerdict(c.policy.upper(), f"{key}: policy {c.policy}", key)
        if found.verdict in ("DROP", "REJECT"):
            return found
    return None


def _nft_walk(chains: dict[str, NftChain], key: str, flow: Flow, depth: int) -> IptVerdict | None:
    c = chains.get(key)
    if c is None or depth > 10:
        return None
    for rule in c.rules:
        verdict, target = _nft_rule(rule, flow)
        if verdict is None:
            continue
        if verdict in ("accept", "drop", "reject"):
            return IptVerdict(verdict.upper(), f"{key}: {rule}", key)
        if verdict == "return":
            return None
        if verdict in ("jump", "goto") and target:
            found = _nft_walk(chains, f"{c.table}/{target}", flow, depth + 1)
            if found is not None or verdict == "goto":
                return found
    return None


def _nft_rule(rule: str, flow: Flow) -> tuple[str | None, str | None]:
    """Return the rule's verdict (and jump target) when it matches the flow, else (None, None)."""
    words = rule.replace("{", " { ").replace("}", " } ").replace(",", " ").split()
    verdict = target = None
    i = 0
    while i < len(words):
        w = words[i]
        if w in ("accept", "drop", "reject", "return"):
            verdict = w
            break
        if w in ("jump", "goto") and i + 1 < len(words):
            verdict, target = w, words[i + 1]
            break
        values, j = _nft_values(words, i + 2) if i + 1 < len(words) else ([], i + 1)
        neg = bool(values) and values[0] == "!="
        if neg:
            values, j = _nft_values(words, i + 3)
        hit: bool | None = None
        if w == "ct" and words[i + 1] == "state":
            hit = "new" in values
        elif w in ("iif", "iifname"):
            values, j = _nft_values(words, i + 1)
            neg = bool(values) and values[0] == "!="
            if neg:
                values, j = _nft_values(words, i + 2)
            hit = flow.iface is None or any(
                flow.iface == v.strip('"') or v.endswith('*"') and flow.iface.startswith(v.strip('"*')) for v in values
            )
        elif w in ("ip",) and words[i + 1] in ("saddr", "daddr"):
            addr = flow.src if words[i + 1] == "saddr" else flow.dst
            hit = addr is None or any(_in(addr, v) for v in values)
        elif w in ("tcp", "udp", "th") and words[i + 1] in ("dport", "sport"):
            if words[i + 1] == "sport":
                hit = True
            else:
                hit = (
                    (w == "th" or flow.proto == w)
                    and flow.dport is not None
                    and any(_port_in(flow.dport, v.replace("-", ":")) for v in values)
                )
        elif w == "meta" and words[i + 1] == "l4proto":
            hit = flow.proto in values
        elif w == "ip" and words[i + 1] == "protocol":
            hit = flow.proto in values
        else:
            j = i + 1
        if hit is not None:
            if neg:
                hit = not hit
            if not hit:
                return None, None
        i = max(j, i + 1)
    return verdict, target


def _nft_values(words: Sequence[str], i: int) -> tuple[list[str], int]:
    """Return the value (or the set of values) at ``words[i]`` and the index after it."""
    if i >= len(words):
        return [], i
    if words[i] == "{":
        end = words.index("}", i) if "}" in words[i:] else len(words)
        return list(words[i + 1 : end]), end + 1
    return [words[i]], i + 1
