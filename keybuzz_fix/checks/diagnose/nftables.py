"""How nftables' own base chains judge one flow, from ``nft list ruleset`` (pure code).

iptables-nft's tables (``ip filter``, ``ip6 nat``, …) are left out: diagnose reads those as
iptables (:mod:`keybuzz_fix.checks.diagnose.filters`). What remains is firewalld's or an
operator's. The kernel walks every base chain of a hook in priority order (nft(8), CHAINS): an
accept ends one base chain and the packet goes on to the next, a drop or reject ends it all — so
the verdict is that of the first base chain, by priority, that drops the flow.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from keybuzz_fix.checks.diagnose.filters import SYN, Flow, IptVerdict, address_in, port_in, sport_holds, tcp_flag_bits

_IPTABLES_TABLES = {"filter", "nat", "mangle", "raw", "security"}


@dataclass(frozen=True)
class NftChain:
    """One chain of ``nft list ruleset``: its table, hook and policy (base chains), its rules."""

    table: str
    name: str
    hook: str | None
    policy: str
    rules: tuple[str, ...]
    priority: int | None = None  # base chains: the lower, the earlier on its hook; None: not read


def nft_chains(lines: Sequence[str]) -> dict[str, NftChain]:
    """Parse ``nft list ruleset`` into chains (``family table/chain``), leaving out iptables-nft's own tables."""
    chains: dict[str, NftChain] = {}
    table = chain = None
    hook: str | None = None
    policy = "accept"
    priority: int | None = None
    rules: list[str] = []
    depth = 0
    for raw in lines:
        line = raw.strip()
        if line.startswith("table ") and line.endswith("{"):
            words = line.split()
            table = f"{words[1]} {words[2]}" if len(words) >= 4 else words[1]
            depth = 1
        elif line.startswith("chain ") and line.endswith("{") and table:
            chain, hook, policy, priority, rules, depth = line.split()[1], None, "accept", None, [], 2
        elif line == "}":
            if depth == 2 and table and chain:
                family, _, name = table.partition(" ")
                if not (family in ("ip", "ip6") and name in _IPTABLES_TABLES):
                    chains[f"{table}/{chain}"] = NftChain(table, chain, hook, policy, tuple(rules), priority)
                chain = None
            depth -= 1
        elif chain is not None:
            if line.startswith("type "):
                words = line.replace(";", " ").split()
                hook = _word_after(words, "hook")
                policy = _word_after(words, "policy") or policy
                priority = _priority(words)
            elif line:
                rules.append(line)
    return chains


def _word_after(words: Sequence[str], key: str) -> str | None:
    """The word after ``key`` (``hook input``, ``policy drop``); None if there is none (a cut-off line)."""
    at = words.index(key) if key in words else len(words)
    return words[at + 1] if at + 1 < len(words) else None


# The priority names of the ip, ip6 and inet families and their values (nft(8), CHAINS, "Standard priority names").
_PRIORITIES = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100}


def _priority(words: Sequence[str]) -> int | None:
    """A base chain's priority from its ``type`` line's words: ``0``, ``-150``, ``filter``, ``filter - 5``."""
    at = words.index("priority") + 1 if "priority" in words else len(words)
    if at >= len(words):
        return None
    base = _PRIORITIES.get(words[at])
    if base is None:
        number = words[at].removeprefix("-")
        return int(words[at]) if number.isascii() and number.isdigit() else None
    sign, offset = [*words[at + 1 : at + 3], "", ""][:2]
    if sign in ("+", "-") and offset.isascii() and offset.isdigit():
        return base + int(offset) if sign == "+" else base - int(offset)
    return base


def nft_verdict(lines: Sequence[str], flow: Flow) -> IptVerdict | None:
    """Return the verdict of nftables' own base chains on the flow's hook: the first by priority that drops, else None.

    Chains of equal (or unread) priority keep the listing's order; the kernel's order among them is
    its own (nft(8) leaves it undefined).
    """
    chains = nft_chains(lines)
    hook = flow.chain.lower()
    base = [(key, c) for key, c in chains.items() if c.hook == hook]
    for key, c in sorted(base, key=lambda kc: kc[1].priority or 0):
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
            hit = addr is None or any(address_in(addr, v) for v in values)
        elif w in ("tcp", "udp", "th") and words[i + 1] in ("dport", "sport"):
            spec = ",".join(v.replace("-", ":") for v in values)
            if flow.proto != w and not (w == "th" and flow.proto in ("tcp", "udp")):
                hit, neg = False, False  # `tcp dport …` is also `meta l4proto tcp`, which `!=` does not negate
            elif words[i + 1] == "sport":
                hit, neg = sport_holds(flow.sport, spec, negated=neg), False
            else:
                hit = flow.dport is not None and port_in(flow.dport, spec)
        elif w == "tcp" and words[i + 1] == "flags":
            hit, neg = flow.proto == "tcp" and _syn_matches(rule), False
        elif w in ("tcp", "udp") and words[i + 1] not in ("dport", "sport"):
            hit, neg = flow.proto == w, False  # `udp length …`: the field is not read, its protocol is a condition
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


_TCP_FLAGS = re.compile(r"\btcp flags (?:(==|!=) )?(\{[^}]*\}|[a-z0-9,|]+)(?: / ([a-z0-9,]+))?")


def _syn_matches(rule: str) -> bool:
    """Whether a new flow's first packet (SYN alone) matches the rule's ``tcp flags`` condition (nft(8)).

    ``tcp flags syn`` — any of those set; ``== syn`` / ``!= syn`` — exactly those, or not; ``{ syn, ack }``
    — exactly one of the set; ``syn / fin,syn,rst,ack`` — those among the mask (``!=``: not those).
    """
    m = _TCP_FLAGS.search(rule)
    if m is None:
        return True  # a form not read: the condition is taken as holding, as for other fields
    op, value, mask = m.groups()
    negated = op == "!="
    if value.startswith("{"):
        return any(tcp_flag_bits(v) == SYN for v in value.strip("{} ").split(",")) != negated
    bits = tcp_flag_bits(value)
    if mask is not None:
        return (SYN & tcp_flag_bits(mask) == bits) != negated
    if op is not None:
        return (bits == SYN) != negated
    return bool(bits & SYN)


def _nft_values(words: Sequence[str], i: int) -> tuple[list[str], int]:
    """Return the value (or the set of values) at ``words[i]`` and the index after it."""
    if i >= len(words):
        return [], i
    if words[i] == "{":
        end = words.index("}", i) if "}" in words[i:] else len(words)
        return list(words[i + 1 : end]), end + 1
    return [words[i]], i + 1
