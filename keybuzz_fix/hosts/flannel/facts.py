"""What a K3s node says about its overlay network: the probes and the pure parsers of their output.

``diagnose`` makes two round trips per node. The first (:func:`node_probe`) prints, in marked
sections, the kernel version, which tools exist, links and addresses, ``ip route get`` to each
peer, ``ip -d link show flannel.1``, ``ethtool -k flannel.1``, ``/run/flannel/subnet.env``, the
kernel log's "bad checksum" lines and the UFW probe of :mod:`keybuzz_fix.hosts.ufw.facts`. The second
(:func:`ping_probe`) pings every other node's ``flannel.1`` address (small and full-size,
don't-fragment, all at once) and asks CoreDNS through its ClusterIP. A missing tool leaves its
fact ``None`` — "not checked" — never a pass. ``overlay --checksum-offload-off`` reads
:data:`OFFLOAD_PROBE` (ethtool, flannel.1's features, the udev rule).
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from keybuzz_fix.hosts.sections import section_header, split_sections
from keybuzz_fix.hosts.ufw.facts import UFW_PROBE, UfwFacts, parse_ufw_facts
from keybuzz_fix.hosts.ufw.rules import ParseError
from keybuzz_fix.inventory import plain_address

VXLAN_DEVICE = "flannel.1"
OFFLOAD_FEATURE = "tx-checksum-ip-generic"
UDEV_DIR = "/etc/udev/rules.d"
UDEV_RULE = f"{UDEV_DIR}/90-keybuzz-fix-flannel-offload.rules"
SUBNET_ENV = "/run/flannel/subnet.env"
DNS_NAME = "kubernetes.default.svc.cluster.local"
TOOLS = ("ip", "ethtool", "ping", "dig", "nslookup", "dmesg", "ufw")


@dataclass(frozen=True)
class RouteGet:
    """One line of ``ip route get``: how the node reaches an address."""

    dest: str
    dev: str | None
    src: str | None = None
    via: str | None = None


@dataclass(frozen=True)
class VxlanLink:
    """The VXLAN device as ``ip -d link show`` prints it."""

    name: str
    mtu: int | None
    vni: int | None
    local: str | None
    dev: str | None
    dstport: int | None
    up: bool


@dataclass(frozen=True)
class NodeFacts:
    """One node's overlay facts; ``None`` means the tool or file was not there (not checked)."""

    kernel: str | None
    tools: frozenset[str]
    links: Mapping[str, int] = field(default_factory=dict)  # interface -> MTU
    addrs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # interface -> IPv4 addresses
    routes: Mapping[str, RouteGet | None] = field(default_factory=dict)  # peer private IP -> route
    flannel: VxlanLink | None = None
    offload: Mapping[str, tuple[bool, bool]] | None = None  # ethtool -k flannel.1: feature -> (on, fixed)
    subnet_env: Mapping[str, str] | None = None
    kernel_log: tuple[str, ...] | None = None  # "bad checksum" lines; None: log unreadable
    ufw: UfwFacts | None = None
    ufw_error: str | None = None

    def iface_of(self, address: str) -> str | None:
        """Return the interface that holds ``address``."""
        return next((name for name, ips in self.addrs.items() if address in ips), None)

    @property
    def flannel_addr(self) -> str | None:
        """Return the first IPv4 address on ``flannel.1``."""
        return next(iter(self.addrs.get(VXLAN_DEVICE, ())), None)


@dataclass(frozen=True)
class PingResult:
    """The summary of one ``ping`` run."""

    sent: int
    received: int
    detail: str = ""

    @property
    def ok(self) -> bool:
        """Whether any reply came back."""
        return self.received > 0


@dataclass(frozen=True)
class DnsResult:
    """One lookup through the CoreDNS ClusterIP; ``ok`` is None when no tool could ask."""

    ok: bool | None
    detail: str


@dataclass(frozen=True)
class PeerPings:
    """What one node saw pinging the others."""

    small: Mapping[str, PingResult]  # target name -> small ping
    big: Mapping[str, PingResult]  # target name -> full-size ping with don't-fragment
    ping_missing: bool = False
    dns: DnsResult | None = None


# -- probes -------------------------------------------------------------------------------------


def node_probe(peers: Sequence[str]) -> str:
    """Return the first probe script; ``peers`` are the other nodes' private IPs (validated)."""
    checked = [_plain(p) for p in peers]
    tools = " ".join(TOOLS)
    routes = "".join(f"{section_header(f'route {p}')}; ip route get {p} 2>&1; " for p in checked)
    parts = [
        "export LC_ALL=C",
        f"{section_header('kernel')}; uname -r",
        f"{section_header('tools')}; for t in {tools}; do command -v $t >/dev/null 2>&1 && echo $t; done",
        f"if command -v ip >/dev/null 2>&1; then {section_header('links')}; ip -o link show; "
        f"{section_header('addrs')}; ip -o -4 addr show; "
        f"{section_header('flannel-link')}; ip -d link show {VXLAN_DEVICE} 2>&1; "
        f"{routes}fi",
        f"if command -v ethtool >/dev/null 2>&1; then {section_header('ethtool')}; ethtool -k {VXLAN_DEVICE} 2>&1; fi",
        f"if [ -r {SUBNET_ENV} ]; then {section_header('subnet-env')}; cat {SUBNET_ENV}; fi",
        f"if dmesg >/dev/null 2>&1; then {section_header('kernel-log')}; dmesg 2>/dev/null | grep -i 'bad checksum' "
        f"| tail -n 20; fi",
        UFW_PROBE,  # last: it stops early when ufw is missing
    ]
    return "; ".join(parts)


def ping_probe(targets: Sequence[tuple[str, str]], big_size: int | None, dns_server: str | None) -> str:
    """Return the second probe: ping each ``(name, flannel.1 address)`` at once, and ask CoreDNS."""
    addrs = [_plain(a) for _, a in targets]
    dns = _plain(dns_server) if dns_server else None
    jobs = []
    for i, a in enumerate(addrs):
        jobs.append(f'ping -n -q -c 3 -i 0.2 -W 1 {a} > "$d/p{i}" 2>&1 &')
        if big_size:
            jobs.append(f'ping -n -q -c 2 -i 0.2 -W 1 -M do -s {int(big_size)} {a} > "$d/b{i}" 2>&1 &')
    pings = (
        f"if command -v ping >/dev/null 2>&1; then {' '.join(jobs)} :; else {section_header('no-ping')}; fi; "
        if jobs
        else ""
    )
    lookup = ""
    if dns:
        name = shlex.quote(DNS_NAME)
        lookup = (
            f"if command -v dig >/dev/null 2>&1; then (echo dig; dig +time=2 +tries=1 +short @{dns} {name} A "
            f'2>&1; echo "rc=$?") > "$d/dns" 2>&1 & elif command -v nslookup >/dev/null 2>&1; then '
            f'(echo nslookup; nslookup -timeout=2 {name} {dns} 2>&1; echo "rc=$?") > "$d/dns" 2>&1 & '
            f'else echo none > "$d/dns"; fi; '
        )
    show = "".join(
        f'{section_header(f"ping {i}")}; cat "$d/p{i}" 2>/dev/null; '
        + (f'{section_header(f"big {i}")}; cat "$d/b{i}" 2>/dev/null; ' if big_size else "")
        for i in range(len(addrs))
    )
    if dns:
        show += f'{section_header("dns")}; cat "$d/dns"; '
    return f'export LC_ALL=C; d=$(mktemp -d) || exit 1; {pings}{lookup}wait; {show}rm -rf "$d"; {section_header("end")}'


# What ``overlay --checksum-offload-off`` reads: where ethtool is, flannel.1's features, the udev rule. Its sections'
# names are its own: the UFW probe runs in the same script.
OFFLOAD_PROBE = (
    f"{section_header('offload-ethtool')}; command -v ethtool 2>/dev/null; "
    f"if command -v ethtool >/dev/null 2>&1; then {section_header('offload-features')}; "
    f"LC_ALL=C ethtool -k {VXLAN_DEVICE} 2>&1; fi; "
    f"if [ -f {UDEV_RULE} ]; then {section_header('offload-rule')}; cat {UDEV_RULE}; "
    f"else {section_header('offload-no-rule')}; fi; {section_header('offload-end')}"
)


# -- parsers ------------------------------------------------------------------------------------


def parse_node_facts(text: str) -> NodeFacts:
    """Parse the output of :func:`node_probe`."""
    s = split_sections(text)
    kernel = next((line.strip() for line in s.get("kernel", []) if line.strip()), None)
    tools = frozenset(line.strip() for line in s.get("tools", []) if line.strip() in TOOLS)
    routes = {
        name.split(" ", 1)[1]: parse_route_get("\n".join(lines))
        for name, lines in s.items()
        if name.startswith("route ")
    }
    ufw, ufw_error = None, None
    try:
        ufw = parse_ufw_facts(text)
    except ParseError as e:
        ufw_error = str(e)
    return NodeFacts(
        kernel=kernel,
        tools=tools,
        links=parse_links("\n".join(s.get("links", []))),
        addrs=parse_addrs("\n".join(s.get("addrs", []))),
        routes=routes,
        flannel=parse_vxlan_link("\n".join(s["flannel-link"])) if "flannel-link" in s else None,
        offload=parse_features("\n".join(s["ethtool"])) if "ethtool" in s else None,
        subnet_env=parse_subnet_env("\n".join(s["subnet-env"])) if "subnet-env" in s else None,
        kernel_log=tuple(line for line in s["kernel-log"] if line.strip()) if "kernel-log" in s else None,
        ufw=ufw,
        ufw_error=ufw_error,
    )


def parse_route_get(text: str) -> RouteGet | None:
    """Parse ``ip route get ADDR``; ``None`` when there is no route."""
    for line in text.splitlines():
        words = line.split()
        if words and words[0] in ("local", "broadcast", "multicast", "unicast"):
            words = words[1:]
        if not words or not _is_ip(words[0]):
            continue
        values = _pairs(words[1:], ("dev", "src", "via"))
        return RouteGet(dest=words[0], dev=values.get("dev"), src=values.get("src"), via=values.get("via"))
    return None


def parse_vxlan_link(text: str) -> VxlanLink | None:
    """Parse ``ip -d link show DEV``; ``None`` when the device does not exist."""
    head = re.search(r"^\d+:\s+([^:@\s]+)(?:@\S+)?:\s+<([^>]*)>(.*)$", text, re.MULTILINE)
    if head is None:
        return None
    words = text.split()
    values = _pairs(words, ("mtu", "id", "local", "dev", "dstport"))
    vxlan = "vxlan" in words
    return VxlanLink(
        name=head.group(1),
        mtu=_int(values.get("mtu")),
        vni=_int(values.get("id")) if vxlan else None,
        local=values.get("local"),
        dev=values.get("dev"),
        dstport=_int(values.get("dstport")),
        up="UP" in head.group(2).split(","),
    )


def parse_links(text: str) -> dict[str, int]:
    """Parse ``ip -o link show`` into ``{interface: MTU}``."""
    links: dict[str, int] = {}
    for m in re.finditer(r"^\d+:\s+([^:@\s]+)(?:@\S+)?:\s+<[^>]*>.*?\bmtu (\d+)", text, re.MULTILINE):
        links[m.group(1)] = int(m.group(2))
    return links


def parse_addrs(text: str) -> dict[str, tuple[str, ...]]:
    """Parse ``ip -o -4 addr show`` into ``{interface: (address, ...)}``."""
    addrs: dict[str, list[str]] = {}
    for m in re.finditer(r"^\d+:\s+(\S+)\s+inet\s+([0-9.]+)(?:/\d+)?", text, re.MULTILINE):
        addrs.setdefault(m.group(1), []).append(m.group(2))
    return {k: tuple(v) for k, v in addrs.items()}


def parse_subnet_env(text: str) -> dict[str, str]:
    """Parse Flannel's ``subnet.env`` (``KEY=value`` lines)."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key):
            env[key] = value.strip().strip('"')
    return env


def parse_kernel_version(release: str | None) -> tuple[int, int] | None:
    """Return ``(major, minor)`` of a ``uname -r`` string such as ``5.4.0-150-generic``."""
    m = re.match(r"\s*(\d+)\.(\d+)", release or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def bad_checksum_lines(lines: Sequence[str], port: int) -> list[str]:
    """Return the kernel log lines reporting a bad UDP checksum on ``port`` (Flannel's VXLAN)."""
    return [line.strip() for line in lines if "bad checksum" in line.lower() and re.search(rf":{port}\b", line)]


def parse_ping(text: str) -> PingResult:
    """Parse the summary of ``ping -q`` (iputils or busybox)."""
    m = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", text)
    detail = next(
        (
            line.strip()
            for line in text.splitlines()
            if line.strip() and not line.startswith(("PING", "---", "rtt", "round-trip"))
        ),
        "",
    )
    if m is None:
        return PingResult(0, 0, detail or "no ping summary")
    return PingResult(int(m.group(1)), int(m.group(2)), detail)


def parse_dns(text: str) -> DnsResult:
    """Parse the DNS section of :func:`ping_probe` (``dig +short`` or ``nslookup`` output)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines or lines[0] == "none":
        return DnsResult(None, "neither dig nor nslookup on the node")
    tool, body = lines[0], lines[1:]
    rc = next((line[3:] for line in reversed(body) if line.startswith("rc=")), "?")
    body = [line for line in body if not line.startswith("rc=")]
    if tool == "dig":
        answers = [line for line in body if _is_ip(line)]
    else:
        after = False
        answers = []
        for line in body:
            if line.startswith("Name:"):
                after = True
            elif after and line.startswith("Address"):
                answers.append(line.split()[-1])
    if answers and rc == "0":
        return DnsResult(True, f"{tool}: {DNS_NAME} -> {', '.join(answers)}")
    why = next(
        (
            line
            for line in body
            if "timed out" in line or "refused" in line or "NXDOMAIN" in line or "can't find" in line
        ),
        body[-1] if body else f"exit {rc}",
    )
    return DnsResult(False, f"{tool}: {why}")


def parse_pings(text: str, names: Sequence[str]) -> PeerPings:
    """Parse the output of :func:`ping_probe` for targets ``names`` (in the probe's order)."""
    s = split_sections(text)
    small = {n: parse_ping("\n".join(s[f"ping {i}"])) for i, n in enumerate(names) if f"ping {i}" in s}
    big = {n: parse_ping("\n".join(s[f"big {i}"])) for i, n in enumerate(names) if f"big {i}" in s}
    dns = parse_dns("\n".join(s["dns"])) if "dns" in s else None
    return PeerPings(small=small, big=big, ping_missing="no-ping" in s, dns=dns)


def _pairs(words: Sequence[str], keys: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for i, w in enumerate(words[:-1]):
        if w in keys and w not in out:
            out[w] = words[i + 1]
    return out


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.isascii() and value.isdigit() else None


def _plain(value: str) -> str:
    """Return ``value`` as a plain IP address for a probe script (a ValueError for anything else)."""
    return str(plain_address(value))


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def parse_features(text: str) -> dict[str, tuple[bool, bool]]:
    """Parse ``ethtool -k`` output into ``{feature: (on, fixed)}``; empty when the device is missing."""
    features: dict[str, tuple[bool, bool]] = {}
    for line in text.splitlines():
        name, sep, value = line.strip().partition(":")
        words = value.split()
        if not sep or not words or words[0] not in ("on", "off") or " " in name:
            continue
        features[name] = (words[0] == "on", "[fixed]" in words[1:])
    return features
