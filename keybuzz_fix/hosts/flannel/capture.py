"""What one node's collect script printed, parsed into a frozen :class:`Capture` (pure code).

The script is :func:`keybuzz_fix.hosts.flannel.collect.collect_script`; its output comes over SSH
or from a file an operator saved (``DIR/<HOSTNAME>.txt``). Every fact is ``None`` (or absent)
when its tool or file was missing: "not checked", never a pass.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from keybuzz_fix.hosts.flannel.facts import parse_features
from keybuzz_fix.hosts.flannel.outputs import (
    Link,
    Neighbour,
    Probe,
    Route,
    parse_addrs,
    parse_fdb,
    parse_links,
    parse_neigh,
    parse_probes,
    parse_routes,
)
from keybuzz_fix.hosts.sections import split_sections
from keybuzz_fix.hosts.ufw import files as ufw_files
from keybuzz_fix.hosts.ufw.facts import UfwFacts, parse_ufw_facts
from keybuzz_fix.hosts.ufw.rules import ParseError
from keybuzz_fix.hosts.ufw.ruleset import POLICIES, Ruleset, rule_families


@dataclass(frozen=True)
class Tables:
    """One iptables backend's rules (legacy or nft): the filter table, the NAT lines kube-proxy wrote, a count."""

    backend: str
    filter: tuple[str, ...]
    nat: tuple[str, ...]
    count: int | None

    def policy(self, chain: str, table: str = "filter") -> str | None:
        """Return the policy of a built-in chain (``ACCEPT``, ``DROP``), or None when not listed."""
        lines = self.filter if table == "filter" else self.nat
        for line in lines:
            if line.startswith(f":{chain} "):
                return line.split()[1]
        return None

    def rules(self, chain: str) -> list[str]:
        """Return the ``-A CHAIN`` lines of the filter table, in order."""
        return [line for line in self.filter if line.startswith(f"-A {chain} ")]

    @property
    def warning(self) -> bool:
        """Whether iptables said tables of the other backend are present."""
        return any("tables present" in line for line in self.filter)


@dataclass(frozen=True)
class Capture:
    """Everything one node's collect script printed."""

    hostname: str | None
    kernel: str | None
    tools: frozenset[str]
    complete: bool  # the script ran to its end
    links: Mapping[str, Link] = field(default_factory=dict)
    addrs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # device -> "ip/prefix"
    routes: tuple[Route, ...] = ()
    neigh: tuple[Neighbour, ...] = ()
    neigh_after: tuple[Neighbour, ...] = ()
    fdb: Mapping[str, tuple[tuple[str, str | None], ...]] = field(default_factory=dict)  # dev -> (mac, dst)
    features: Mapping[str, Mapping[str, tuple[bool, bool]]] = field(default_factory=dict)  # ethtool -k
    drivers: Mapping[str, str] = field(default_factory=dict)  # ethtool -i
    subnet_env: Mapping[str, str] | None = None
    sysctl: Mapping[str, str | None] = field(default_factory=dict)  # None: the file does not exist
    modules: frozenset[str] | None = None
    lib_modules: bool | None = None
    iptables_version: str | None = None
    tables: Mapping[str, Tables] = field(default_factory=dict)  # legacy / nft
    nft: tuple[str, ...] | None = None
    firewalld: Mapping[str, str] | None = None
    firewalld_config: tuple[str, ...] = ()
    ufw: UfwFacts | None = None
    ufw_error: str | None = None
    ufw_rules: Ruleset | None = None  # what UFW's verdicts come from (None: not installed, or not read)
    kernel_log: tuple[str, ...] | None = None
    resolv: tuple[str, ...] = ()
    k3s_config: tuple[str, ...] = ()
    coredns_logs: tuple[str, ...] = ()
    pod: Mapping[str, str] = field(default_factory=dict)  # netns, ip, mtu
    targets: Mapping[str, str] = field(default_factory=dict)  # api, dns, dnspods, nodeport
    probes: tuple[Probe, ...] = ()
    snmp_before: Mapping[str, int] | None = None
    snmp_after: Mapping[str, int] | None = None

    # -- views ----------------------------------------------------------------------------------

    def has(self, tool: str) -> bool:
        """Whether the tool was found on the node."""
        return tool in self.tools

    def ips(self) -> list[str]:
        """Return every IPv4 address of the node."""
        return [a.split("/")[0] for addrs in self.addrs.values() for a in addrs]

    def iface_of(self, address: str) -> str | None:
        """Return the device that holds ``address``."""
        return next((d for d, addrs in self.addrs.items() if any(a.split("/")[0] == address for a in addrs)), None)

    def vxlan(self) -> list[Link]:
        """Return the VXLAN devices (flannel.1, flannel.4096, ...).

        A ``flannel.<VNI>`` device listed without its details (an older capture) counts too, with Flannel's
        port for that VNI: 4789 for rke2's Windows-compatible 4096, else 8472.
        """
        out = []
        for link in self.links.values():
            if link.kind == "vxlan":
                out.append(link)
            elif link.kind is None and re.fullmatch(r"flannel\.\d+", link.name):
                vni = int(link.name.split(".")[1])
                out.append(replace(link, kind="vxlan", vni=vni, port=4789 if vni == 4096 else 8472))
        return out

    def csum_errors(self) -> tuple[int, int] | None:
        """Return ``UdpInCsumErrors`` before and after the probes."""
        if not self.snmp_before or not self.snmp_after:
            return None
        if "InCsumErrors" not in self.snmp_before or "InCsumErrors" not in self.snmp_after:
            return None
        return self.snmp_before["InCsumErrors"], self.snmp_after["InCsumErrors"]

    def probes_of(self, *kinds: str) -> list[Probe]:
        """Return the probes of these kinds."""
        return [p for p in self.probes if p.kind in kinds]


def parse_capture(text: str) -> Capture:
    """Parse a collect script's output (over SSH or from a file)."""
    s = split_sections(text)
    first = _first(s.get("hostname"))
    tools = frozenset(line.strip() for line in s.get("tools", []) if line.strip())
    ufw, ufw_error, ufw_rules = None, None, None
    if "ssh" in s or "missing" in s:
        try:
            ufw = parse_ufw_facts(text)
            ufw_rules = ufw_ruleset(s, ufw)
        except (ParseError, ValueError) as e:
            ufw, ufw_error = None, str(e)
    else:
        ufw_error = "no ufw section"
    tables = {}
    for backend in ("legacy", "nft"):
        if f"iptables-{backend} filter" in s:
            count = _first(s.get(f"iptables-{backend} count"))
            tables[backend] = Tables(
                backend,
                tuple(line.rstrip() for line in s[f"iptables-{backend} filter"]),
                tuple(line.rstrip() for line in s.get(f"iptables-{backend} nat", [])),
                int(count) if count and count.isascii() and count.isdigit() else None,
            )
    firewalld = None
    if "firewalld" in s:
        firewalld = {}
        for line in s["firewalld"]:
            key, sep, value = line.partition("=")
            if sep and key in ("active", "state"):
                firewalld[key] = value.strip()
    links = parse_links("\n".join(s.get("links", [])))
    features = {name[10:]: parse_features("\n".join(v)) for name, v in s.items() if name.startswith("ethtool-k ")}
    _older_probe(s, links, features)
    return Capture(
        hostname=first,
        kernel=_first(s.get("kernel")),
        tools=tools,
        complete="end" in s,
        links=links,
        addrs=parse_addrs("\n".join(s.get("addrs", []))),
        routes=parse_routes("\n".join(s.get("routes", []))),
        neigh=parse_neigh("\n".join(s.get("neigh", []))),
        neigh_after=parse_neigh("\n".join(s.get("neigh-after", []))),
        fdb={name[4:]: parse_fdb(lines) for name, lines in s.items() if name.startswith("fdb ")},
        features=features,
        drivers={
            name[10:]: d for name, v in s.items() if name.startswith("ethtool-i ") and (d := _driver(v)) is not None
        },
        subnet_env=_subnet_env(s["subnet-env"]) if "subnet-env" in s else None,
        sysctl=_sysctl(s.get("sysctl", [])),
        modules=frozenset(w[1] for line in s["modules"] if len(w := line.split()) >= 2 and w[0] == "loaded")
        if "modules" in s
        else None,
        lib_modules=_lib_modules(s.get("modules")),
        iptables_version=_first(s.get("iptables-version")),
        tables=tables,
        nft=tuple(line.rstrip() for line in s["nft"]) if "nft" in s else None,
        firewalld=firewalld,
        firewalld_config=tuple(line[1:] for line in s.get("firewalld", []) if line.startswith("|")),
        ufw=ufw,
        ufw_error=ufw_error,
        ufw_rules=ufw_rules,
        kernel_log=tuple(line.strip() for line in s["kernel-log"] if line.strip()) if "kernel-log" in s else None,
        resolv=tuple(line.strip() for line in s.get("resolv", []) if line.strip() and not line.startswith("|")),
        k3s_config=tuple(line[len("|config: ") :] for line in s.get("resolv", []) if line.startswith("|config: ")),
        coredns_logs=tuple(line[1:] for line in s.get("coredns-logs", []) if line.startswith("|")),
        pod=_pairs(_first(s.get("pod")) or ""),
        targets=_pairs(_first(s.get("targets")) or ""),
        probes=parse_probes(text),
        snmp_before=_snmp(s.get("snmp-before")),
        snmp_after=_snmp(s.get("snmp-after")),
    )


def ufw_ruleset(s: Mapping[str, list[str]], facts: UfwFacts) -> Ruleset | None:
    """Return the rules UFW judges packets by, for the verdict model; None when UFW is not installed.

    From UFW's files when the probe read them (user.rules for IPv4, user6.rules for IPv6, the
    policies of /etc/default/ufw); else from ``ufw show added`` and ``ufw status``, where a rule
    goes to the families ufw writes it to (``ufw allow 8472/udp``: both).
    """
    if not facts.installed:
        return None
    if "rules" in s and "defaults" in s and "chains" in s:
        return Ruleset.from_files(
            _file(s["rules"]),
            _file(s["rules6"]) if "rules6" in s else None,
            _file(s["defaults"]),
            active=ufw_files.chains_active(s["chains"]),
            kernel_ipv6="yes" in (line.strip() for line in s.get("kernel-ipv6", [])),
        )
    incoming = facts.default_incoming if facts.default_incoming in POLICIES else "deny"
    ruleset = Ruleset(
        rules4=tuple(r for r in facts.rules if 4 in rule_families(r)),
        rules6=tuple(r for r in facts.rules if 6 in rule_families(r)),
        incoming=incoming or "deny",
        active=facts.active,
    )
    for rule in ruleset.rules4 + ruleset.rules6:
        # `ufw show added` names a rule's application, not its ports: without the profile (not in the
        # capture) the rule cannot be judged, and UFW is "not checked" rather than guessed (UnknownProfile)
        for name in (rule.app, rule.source_app):
            if name and rule.app_ports is None:
                ruleset.profile(name)
    return ruleset


def _file(lines: list[str]) -> str:
    """Undo the ``|`` the probe puts before each line of a file."""
    return "\n".join(line[1:] for line in lines if line.startswith("|"))


def _older_probe(
    s: Mapping[str, list[str]], links: dict[str, Link], features: dict[str, dict[str, tuple[bool, bool]]]
) -> None:
    """Read what the node probe of earlier versions printed: ``ip -d link show flannel.1`` and its ``ethtool -k``.

    A capture an operator saved with an older keybuzz-fix has no probes, but its devices still count.
    """
    if "flannel-link" in s:
        for name, link in parse_links(" ".join(line.strip() for line in s["flannel-link"])).items():
            links[name] = link
    if "ethtool" in s:
        head = next((line for line in s["ethtool"] if line.startswith("Features for ")), None)
        if head is not None:
            features.setdefault(head[len("Features for ") :].rstrip(":"), parse_features("\n".join(s["ethtool"])))


# -- parsers of single outputs --------------------------------------------------------------------


def _snmp(lines: list[str] | None) -> dict[str, int] | None:
    if not lines:
        return None
    rows = [line.split()[1:] for line in lines if line.startswith("Udp:")]
    if len(rows) < 2:
        return None
    return {k: int(v) for k, v in zip(rows[0], rows[1], strict=False) if v.isascii() and v.lstrip("-").isdigit()}


def _sysctl(lines: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for line in lines:
        key, sep, value = line.strip().partition("=")
        if sep:
            out[key.replace("/", ".")] = None if value == "missing" else value
    return out


def _lib_modules(lines: list[str] | None) -> bool | None:
    for line in lines or []:
        words = line.split()
        if len(words) >= 2 and words[0] == "lib-modules":
            return words[1] == "yes"
    return None


def _driver(lines: list[str]) -> str | None:
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("driver:")), None)


def _subnet_env(lines: list[str]) -> dict[str, str]:
    env = {}
    for line in lines:
        key, sep, value = line.strip().partition("=")
        if sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key):
            env[key] = value.strip().strip('"')
    return env


def _pairs(line: str) -> dict[str, str]:
    out = {}
    for word in re.findall(r"(\w+)=(\S*(?: [0-9.]+(?=\s|$))*)", line):
        out[word[0]] = word[1]
    return {k: v for k, v in out.items() if v}


def _first(lines: list[str] | None) -> str | None:
    return next((line.strip() for line in lines or [] if line.strip()), None)
