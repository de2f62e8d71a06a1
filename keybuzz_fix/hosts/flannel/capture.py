"""What one node's collect script printed, parsed into a frozen :class:`Capture` (pure code).

The script is :func:`keybuzz_fix.hosts.flannel.collect.collect_script`; its output comes over SSH
or from a file an operator saved (``DIR/<HOSTNAME>.txt``). Every fact is ``None`` (or absent)
when its tool or file was missing: "not checked", never a pass.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from keybuzz_fix.hosts.flannel.facts import parse_features
from keybuzz_fix.hosts.sections import split_sections
from keybuzz_fix.hosts.ufw import files as ufw_files
from keybuzz_fix.hosts.ufw.facts import UfwFacts, parse_ufw_facts
from keybuzz_fix.hosts.ufw.rules import ParseError
from keybuzz_fix.hosts.ufw.ruleset import POLICIES, Ruleset, rule_families


@dataclass(frozen=True)
class Link:
    """One network device as ``ip -d -o link show`` prints it."""

    name: str
    kind: str | None  # vxlan, wireguard, bridge, veth, ... (None: a plain NIC)
    mtu: int | None
    mac: str | None
    up: bool
    vni: int | None = None
    local: str | None = None  # vxlan: the underlay address it sends from
    dev: str | None = None  # vxlan: the underlay device
    port: int | None = None  # vxlan: dstport


@dataclass(frozen=True)
class Route:
    """One line of ``ip -4 route show``."""

    dest: str
    via: str | None
    dev: str | None
    default: bool = False


@dataclass(frozen=True)
class Neighbour:
    """One line of ``ip -4 neigh show``."""

    ip: str
    dev: str
    mac: str | None
    state: str


@dataclass(frozen=True)
class Probe:
    """One probe the script ran: from where (pod or node), what kind, to what, and what came back."""

    source: str  # pod | node
    kind: str  # pod, pod-big, api, dns, dns-pod, nodeport, underlay, underlay-big, vtep, vtep-big
    target: str  # an address, or address:port
    size: int | None
    command: str
    output: tuple[str, ...]
    rc: int | None

    @property
    def address(self) -> str:
        """Return the target address without its port."""
        return self.target.rsplit(":", 1)[0] if self.target.count(":") == 1 else self.target

    @property
    def result(self) -> str:
        """Return ok, fail, wrong-source (an answer from another address than asked) or notool."""
        return _probe_result(self)[0]

    @property
    def detail(self) -> str:
        """Return the line of output that says how it went."""
        return _probe_result(self)[1]

    @property
    def id(self) -> str:
        """Return a short name for the probe (``pod:ping 10.42.1.5``)."""
        size = f" {self.size}B DF" if self.size else ""
        return f"{self.source} -> {self.kind} {self.target}{size}"


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

_LINK = re.compile(r"^\d+:\s+([^:@\s]+)(?:@\S+)?:\s+<([^>]*)>(.*)$")


def parse_links(text: str) -> dict[str, Link]:
    """Parse ``ip -d -o link show`` (one device a line) into links by name."""
    out: dict[str, Link] = {}
    for line in text.splitlines():
        m = _LINK.match(line.strip())
        if m is None:
            continue
        name, flags, rest = m.group(1), m.group(2).split(","), m.group(3).replace("\\", " ")
        words = rest.split()
        values = _after(words, ("mtu", "link/ether", "id", "local", "dev", "dstport"))
        kind = next((k for k in ("vxlan", "wireguard", "bridge", "veth", "ipip", "tun", "dummy") if k in words), None)
        if kind == "bridge" and "bridge_slave" in words and words.index("bridge_slave") < words.index("bridge"):
            kind = "veth" if "veth" in words else None
        vxlan = kind == "vxlan"
        out[name] = Link(
            name=name,
            kind=kind,
            mtu=_int(values.get("mtu")),
            mac=values.get("link/ether"),
            up="UP" in flags,
            vni=_int(values.get("id")) if vxlan else None,
            local=values.get("local") if vxlan else None,
            dev=values.get("dev") if vxlan else None,
            port=_int(values.get("dstport")) if vxlan else None,
        )
    return out


def parse_addrs(text: str) -> dict[str, tuple[str, ...]]:
    """Parse ``ip -o -4 addr show`` into ``{device: ("ip/prefix", ...)}``; a line that is no address is skipped."""
    out: dict[str, list[str]] = {}
    for m in re.finditer(r"^\d+:\s+(\S+)\s+inet\s+([0-9.]+(?:/\d+)?)", text, re.MULTILINE):
        address = m.group(2) if "/" in m.group(2) else m.group(2) + "/32"
        try:
            ipaddress.ip_interface(address)
        except ValueError:
            continue
        out.setdefault(m.group(1), []).append(address)
    return {k: tuple(v) for k, v in out.items()}


def parse_routes(text: str) -> tuple[Route, ...]:
    """Parse ``ip -4 route show``."""
    out = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0] in ("broadcast", "local", "unreachable", "blackhole", "prohibit"):
            continue
        values = _after(words, ("via", "dev"))
        out.append(Route(words[0], values.get("via"), values.get("dev"), words[0] == "default"))
    return tuple(out)


def parse_neigh(text: str) -> tuple[Neighbour, ...]:
    """Parse ``ip -4 neigh show``."""
    out = []
    for line in text.splitlines():
        words = line.split()
        if len(words) < 3 or not _is_ip(words[0]):
            continue
        values = _after(words, ("dev", "lladdr"))
        out.append(Neighbour(words[0], values.get("dev", ""), values.get("lladdr"), words[-1]))
    return tuple(out)


def parse_fdb(lines: Sequence[str]) -> tuple[tuple[str, str | None], ...]:
    """Parse ``bridge fdb show dev DEV`` into (MAC, underlay destination) pairs."""
    out = []
    for line in lines:
        words = line.split()
        if words and re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", words[0]):
            out.append((words[0], _after(words, ("dst",)).get("dst")))
    return tuple(out)


def parse_probes(text: str) -> tuple[Probe, ...]:
    """Return the probes of a collect script's output, in the order printed."""
    out = []
    current: list[str] | None = None
    head: list[str] = []
    blocks: list[tuple[list[str], list[str]]] = []
    for line in text.split("\n"):
        if line.startswith("@@keybuzz-fix@@ "):
            words = line.split()[1:]
            if words[:1] == ["probe"] and len(words) >= 4:
                head, current = words[1:], []
                blocks.append((head, current))
            else:
                current = None
        elif current is not None:
            current.append(line.rstrip())
    for head, body in blocks:
        source, kind, target = head[0], head[1], head[2]
        size = _int(head[3]) if len(head) > 3 else None
        command = body[0][2:] if body and body[0].startswith("$ ") else ""
        rest = body[1:] if command else body
        rc = next((_int(line[3:]) for line in reversed(rest) if line.startswith("rc=")), None)
        output = tuple(line for line in rest if line.strip() and not line.startswith("rc="))
        out.append(Probe(source, kind, target, size, command, output, rc))
    return tuple(out)


def _probe_result(p: Probe) -> tuple[str, str]:
    text = "\n".join(p.output)
    if p.output and p.output[0].strip() == "notool":
        return "notool", "no tool on the node to make this probe"
    if p.kind in ("dns", "dns-pod"):
        return _dns_result(p, text)
    if p.kind in ("api", "nodeport"):
        m = re.search(r"connect=([0-9.]+)", text)
        if m is not None:
            if float(m.group(1)) > 0:
                return "ok", f"TCP connected ({m.group(0)})"
            return "fail", "connection refused" if p.rc == 7 else f"no TCP connection (curl exit {p.rc})"
        return ("ok", "TCP connected") if p.rc == 0 else ("fail", f"no TCP connection (exit {p.rc})")
    m = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", text)
    detail = next((line.strip() for line in p.output if "error" in line.lower() or "too long" in line), "")
    if m is None:
        return "fail", detail or (p.output[-1].strip() if p.output else f"no answer (exit {p.rc})")
    summary = next((line.strip() for line in p.output if "transmitted" in line), "")
    return ("ok" if int(m.group(2)) > 0 else "fail"), (f"{summary}; {detail}" if detail else summary)


def _dns_result(p: Probe, text: str) -> tuple[str, str]:
    m = re.search(r"reply from unexpected source: ([0-9.]+)#\d+", text)
    if m is not None:
        return "wrong-source", f"reply from unexpected source {m.group(1)} (expected {p.address})"
    m = re.search(r"py: answer from ([0-9.]+) rcode (\d+)", text)
    if m is not None:
        if m.group(1) != p.address:
            return "wrong-source", f"answer came from {m.group(1)}, not from {p.address}"
        return "ok", f"answered (rcode {m.group(2)})"
    if "status:" in text or re.search(r"^Name:", text, re.MULTILINE):
        status = re.search(r"status: (\w+)", text)
        return "ok", f"answered ({status.group(1) if status else 'nslookup'})"
    line = next(
        (x.strip() for x in p.output if "timed out" in x or "no servers" in x or "no answer" in x or "refused" in x),
        p.output[-1].strip() if p.output else f"exit {p.rc}",
    )
    return "fail", line


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


def _after(words: Sequence[str], keys: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for i, w in enumerate(words[:-1]):
        if w in keys and w not in out:
            out[w] = words[i + 1]
    return out


def _first(lines: list[str] | None) -> str | None:
    return next((line.strip() for line in lines or [] if line.strip()), None)


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.isascii() and value.isdigit() else None


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
