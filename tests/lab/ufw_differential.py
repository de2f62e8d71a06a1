"""The UFW verdict model against real packets: rule sets, a three-host topology, and the comparison.

Topology (all addresses inside 198.18.0.0/15 and a ULA prefix that exists only in these
namespaces; the root namespace routes none of them)::

      source S                         target T (ufw under test)                  backend K
    eth0 (lab bridge) 198.18.0.s   ── eth0 198.18.0.t, fd6b:6266:7566:1::1
      + 198.19.1.10, 198.19.1.200       (on-link route to 198.19.1.0/24)
      + …:1::10, …:1:8000::20
    priv0 198.19.2.10, …:2::10     ── enp7s0 198.19.2.1, …:2::1  (a private link)
                                       fwd0 198.19.3.1, …:3::1   ── eth1 198.19.3.10, …:3::10

T runs ufw and ``ufw_agent.py target``; S runs ``ufw_prober.py``; K runs ``ufw_agent.py listen``
and routes back through T. Flows to T itself (INPUT): from 198.19.1.10 / 198.19.1.200 and their
IPv6 twins arriving on eth0, from 198.19.2.10 / …:2::10 arriving on enp7s0. Routed flows (FORWARD,
``ufw route``): from the eth0 sources through T to K, out on fwd0. Each to 31695/tcp, 32720/tcp and
8472/udp. The rule pools are built so every rule either covers a probe source entirely or misses it.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from hypothesis import strategies as st

from keybuzz_fix.hosts.ufw.ruleset import Ruleset
from keybuzz_fix.hosts.ufw.verdict import Decision, Flow, decide, judge
from tests.lab.helper import Helper
from tests.lab.hosts import Lab

V6 = "fd6b:6266:7566"
SPORTS = "20000:59999"  # the source ports the prober uses (ufw_prober.PORTS)
PROBE_PORTS = ((31695, "tcp"), (32720, "tcp"), (8472, "udp"))
TIMEOUT = 0.2  # seconds a probe waits for an answer; one still on its way then is read from conntrack
BURST = 10  # quick connections that tell limit (5 pass, then REJECT) from allow
HERE = Path(__file__).parent
SYSTEM_PYTHON = "/usr/bin/python3"  # ufw's modules live in the system's dist-packages

# Extra application profiles on T, next to the packaged ones (OpenSSH, WWW Full, …).
PROFILES = """\
[KBF-NodePorts]
title=NodePorts
description=ingress NodePorts
ports=31695,32720/tcp

[KBF-VXLAN]
title=VXLAN
description=flannel VXLAN
ports=8472/udp

[KBF-Mixed]
title=Mixed
description=one tcp and one udp port
ports=31695/tcp|8472/udp

[KBF-Range]
title=Range
description=a port range
ports=31000:32000/tcp

[KBF-Any]
title=Any protocol
description=a port without a protocol
ports=32720

[KBF-Clients]
title=Clients
description=client source ports
ports=20000:59999/tcp|20000:59999/udp
"""


@dataclass(frozen=True)
class Source:
    """A probe source address on S and how its packets reach T."""

    name: str
    family: int
    address: str
    interface: str  # where its packets arrive on T
    target: str  # the address of T it connects to (the one on that link)


@dataclass(frozen=True)
class Probe:
    """One flow the test sends and the model judges."""

    id: str
    source: Source
    dst: str
    port: int
    proto: str
    routed: bool

    def flow(self, source: str | None = None) -> Flow:
        """The same packets, as the model takes them (or the same from a whole network)."""
        return Flow(
            self.source.family,
            str(self.port),
            self.proto,
            source=source or self.source.address,
            dest=self.dst,
            sport=SPORTS,
            interface=self.source.interface,
            routed=self.routed,
            out_interface="fwd0" if self.routed else None,
        )

    def wire(self) -> dict[str, object]:
        return {"id": self.id, "src": self.source.address, "dst": self.dst, "port": self.port, "proto": self.proto}


@dataclass(frozen=True)
class Case:
    """One rule set: ufw commands (argv after ``ufw``, ``{T4}`` for T's lab address) and the defaults."""

    rules: tuple[tuple[str, ...], ...]
    incoming: str = "deny"
    routed: str = "deny"
    ipv6: bool = True
    active: bool = True

    def commands(self) -> list[str]:
        return [shlex.join(["ufw", *r]) for r in self.rules]

    def describe(self) -> str:
        head = (
            f"default incoming {self.incoming}, routed {self.routed}, IPV6={'yes' if self.ipv6 else 'no'}, "
            f"{'active' if self.active else 'inactive'}"
        )
        return "\n".join([head, *(f"  {c}" for c in self.commands())])


@dataclass
class Disagreement:
    """A probe where the model and the packets differ."""

    case: Case
    probe: Probe
    model: str
    packets: str
    detail: str = ""
    files: dict[str, str] = field(default_factory=dict)

    def report(self) -> str:
        return (
            f"{self.probe.flow().describe()}: model says {self.model}, packets say {self.packets}"
            f"{f' ({self.detail})' if self.detail else ''}\n{self.case.describe()}"
        )


# -- the rule sets ----------------------------------------------------------------------------

V4_SOURCES = (
    "198.19.0.0/16",
    "198.19.1.0/24",
    "198.19.1.0/25",
    "198.19.1.128/25",
    "198.19.1.10",
    "198.19.1.200",
    "198.19.2.0/24",
    "198.19.2.10",
    "198.18.0.0/15",
    "10.0.0.0/16",
    "0.0.0.0/0",
    "198.19.1.77/24",
)
V6_SOURCES = (
    f"{V6}::/48",
    f"{V6}:1::/64",
    f"{V6}:1::/65",
    f"{V6}:1:8000::/65",
    f"{V6}:1::10",
    f"{V6}:2::/64",
    f"{V6}:2::10",
    "2001:db8::/32",
    "::/0",
)
V4_DESTS = ("{T4}", "198.19.2.1", "198.18.0.0/24", "198.19.3.10", "198.19.3.0/24", "198.19.0.0/16", "10.9.9.9")
V6_DESTS = (f"{V6}:1::1", f"{V6}:2::1", f"{V6}:3::10", f"{V6}::/48", f"{V6}:3::/64", "2001:db8::1")
IN_IFACES = ("eth0", "enp7s0", "eth9")
OUT_IFACES = ("fwd0", "eth9")
SINGLE_PORTS = ("31695", "32720", "8472")
MULTI_PORTS = ("31695,32720", "8472,31695", "30000:32767", "8000:9000", "31000:31999", "32720,8000:8500")
SOURCE_PORTS = ("1024:65535", "20000:65535", "1:1023", "60000:65535", "53")  # all or none of SPORTS
APPS = ("KBF-NodePorts", "KBF-VXLAN", "KBF-Mixed", "KBF-Range", "KBF-Any", "OpenSSH", "WWW Full")
ACTIONS = ("allow", "allow", "allow", "deny", "deny", "reject", "reject", "limit", "limit")


@st.composite
def _addresses(draw: st.DrawFn) -> list[str]:
    family = draw(st.sampled_from((4, 4, 4, 6, 6, 0, 0)))
    if family == 0:
        return []
    sources = ("any", *V4_SOURCES) if family == 4 else ("any", *V6_SOURCES)
    dests = ("any",) * 5 + (V4_DESTS if family == 4 else V6_DESTS)
    src, dst = draw(st.sampled_from(sources)), draw(st.sampled_from(dests))
    if src == "any" and dst == "any":
        src = draw(st.sampled_from(V4_SOURCES if family == 4 else V6_SOURCES))
    return ["from", src, "to", dst]


@st.composite
def rule_argv(draw: st.DrawFn) -> tuple[str, ...]:
    """One ufw rule command, of every form ufw(8) has (some of which ufw itself refuses)."""
    kind = draw(st.sampled_from(("simple",) * 3 + ("full",) * 5 + ("app", "route", "route", "route", "out")))
    action = draw(st.sampled_from(ACTIONS))
    where = draw(st.sampled_from(((),) * 8 + (("prepend",), ("insert", "1"))))
    log = draw(st.sampled_from(((),) * 6 + (("log",), ("log-all",))))
    comment = draw(st.sampled_from(((),) * 5 + (("comment", "kbf test"), ("comment", 'élan "q"'))))
    if kind == "simple":
        port = draw(st.sampled_from(SINGLE_PORTS * 2 + MULTI_PORTS))
        multi = "," in port or ":" in port
        proto = draw(st.sampled_from(("tcp", "udp") if multi else ("tcp", "udp", "")))
        return (*where, action, *log, f"{port}/{proto}" if proto else port, *comment)
    if kind == "app":
        return (*where, action, *log, draw(st.sampled_from(APPS)), *comment)
    head: tuple[str, ...] = ()
    if kind == "route":
        head = ("route", *where, action)
        if draw(st.booleans()):
            head += ("in", "on", draw(st.sampled_from(IN_IFACES)))
        if draw(st.booleans()):
            head += ("out", "on", draw(st.sampled_from(OUT_IFACES)))
    elif kind == "out":
        head = (*where, action, "out") + (("on", draw(st.sampled_from(IN_IFACES))) if draw(st.booleans()) else ())
    else:
        head = (*where, action) + (
            ("in", "on", draw(st.sampled_from(IN_IFACES))) if draw(st.integers(0, 3)) == 0 else ()
        )
    addresses = draw(_addresses()) or ["from", "any", "to", "any"]
    src_part: tuple[str, ...] = ()
    dst_part: tuple[str, ...] = ()
    multi = False
    if draw(st.integers(0, 5)) == 0:
        if draw(st.booleans()):
            src_part = ("app", "KBF-Clients")
        else:
            sport = draw(st.sampled_from(SOURCE_PORTS))
            src_part, multi = ("port", sport), ":" in sport
    choice = draw(st.sampled_from(("port", "port", "port", "app", "proto", "none", "none")))
    if choice == "port":
        dport = draw(st.sampled_from(SINGLE_PORTS * 2 + MULTI_PORTS))
        dst_part, multi = ("port", dport), multi or "," in dport or ":" in dport
    elif choice == "app" and "app" not in src_part:
        dst_part = ("app", draw(st.sampled_from(APPS)))
    proto: tuple[str, ...] = ()
    if "app" not in src_part + dst_part:
        options = ("tcp", "udp") if multi else ("tcp", "udp", "", "") if dst_part or src_part else ("tcp", "udp", "")
        p = draw(st.sampled_from(options))
        proto = ("proto", p) if p else ()
    return (*head, *log, addresses[0], addresses[1], *src_part, addresses[2], addresses[3], *dst_part, *proto, *comment)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """A rule set and its defaults."""
    return Case(
        rules=tuple(draw(st.lists(rule_argv(), min_size=0, max_size=10))),
        incoming=draw(st.sampled_from(("deny", "deny", "deny", "reject", "reject", "allow"))),
        routed=draw(st.sampled_from(("deny", "deny", "reject", "allow"))),
        ipv6=draw(st.sampled_from((True,) * 9 + (False,))),
        active=draw(st.sampled_from((True,) * 19 + (False,))),
    )


SEED = 15
# The networks the eth0 sources sit in: each flow is also judged as part of a flow from all of it.
RANGES = {"a1": "198.19.1.0/24", "a2": "198.19.1.0/24", "b1": f"{V6}:1::/64", "b2": f"{V6}:1::/64"}

# The five cases in the lab's addresses (the private network is 198.19.1.0/24 on eth0 and
# 198.19.2.0/24 on enp7s0), and the disagreements found while building the test. The first one
# found: every allowed TCP flow (issue-2's, say) read "error ECONNRESET", the listener resetting the
# connection before the prober looked; the listener now closes normally and a reset after the
# handshake counts as connected.
_SSH = ("allow", "OpenSSH")
NAMED: dict[str, Case] = {
    "issue-1-limit": Case(rules=(_SSH, ("limit", "31695/tcp"), ("limit", "32720/tcp"))),
    "issue-2-allow-before-deny": Case(
        rules=(_SSH, ("allow", "from", "198.19.1.0/24"), ("deny", "31695/tcp"), ("deny", "32720/tcp"))
    ),
    "issue-3-v6-leftover": Case(
        rules=(
            _SSH,
            ("allow", "from", "::/0", "to", "any", "port", "31695", "proto", "tcp"),
            ("allow", "from", "::/0", "to", "any", "port", "8472", "proto", "udp"),
        )
    ),
    "issue-4-default-accept": Case(rules=(_SSH,), incoming="allow"),
    "issue-5-interface": Case(rules=(_SSH, ("allow", "in", "on", "enp7s0", "from", "198.19.2.0/24"))),
    # Every flow of 198.19.1.10 meets a limit rule: the 6 first attempts, sent at once, shared one budget
    # of 5 new connections (one xt_recent list for all limit rules, INPUT and FORWARD) and the 6th was
    # refused, where each flow alone is limited. The test now sends at most 3 at once per source.
    "found-limit-budget-shared-by-all-limit-rules": Case(
        rules=(("limit", "from", "198.19.1.0/24"), ("route", "limit", "from", "198.19.1.0/24", "to", "any"))
    ),
    # IPv6 TCP meets an ICMPv6 port unreachable (the REJECT of a policy or of a rule without tcp):
    # Linux keeps retrying the SYN instead of failing connect(), so the packets looked like DROP.
    "found-ipv6-tcp-reject-is-icmpv6": Case(rules=(("reject", "from", "::/0"),), incoming="reject"),
}


# -- the lab ----------------------------------------------------------------------------------


class Topology:
    """The three hosts wired as in the module docstring, with their helpers running."""

    def __init__(self, lab: Lab, source: str, target: str, backend: str) -> None:
        self.lab = lab
        self.s, self.t, self.k = lab.host(source), lab.host(target), lab.host(backend)
        self.t4 = self.t.ip
        self._wire()
        (self.t.workdir / "etc-ufw" / "applications.d" / "kbf-test").write_text(PROFILES)
        self.target = Helper(self.t, [SYSTEM_PYTHON, str(HERE / "ufw_agent.py"), "target"], "ufw-agent.log")
        self.backend = Helper(self.k, [SYSTEM_PYTHON, str(HERE / "ufw_agent.py"), "listen"], "ufw-agent.log")
        self.prober = Helper(self.s, [SYSTEM_PYTHON, str(HERE / "ufw_prober.py")], "ufw-prober.log")
        bridge, private = "eth0", "enp7s0"
        self.sources = (
            Source("a1", 4, "198.19.1.10", bridge, self.t4),
            Source("a2", 4, "198.19.1.200", bridge, self.t4),
            Source("p1", 4, "198.19.2.10", private, "198.19.2.1"),
            Source("b1", 6, f"{V6}:1::10", bridge, f"{V6}:1::1"),
            Source("b2", 6, f"{V6}:1:8000::20", bridge, f"{V6}:1::1"),
            Source("q1", 6, f"{V6}:2::10", private, f"{V6}:2::1"),
        )
        probes = []
        for src in self.sources:
            for port, proto in PROBE_PORTS:
                probes.append(Probe(f"{src.name}-{port}", src, src.target, port, proto, False))
                if src.interface == bridge:
                    backend = "198.19.3.10" if src.family == 4 else f"{V6}:3::10"
                    probes.append(Probe(f"{src.name}-{port}-routed", src, backend, port, proto, True))
        self.probes = tuple(probes)

    def _wire(self) -> None:
        _ip(
            "link",
            "add",
            "priv0",
            "netns",
            self.s.netns,
            "type",
            "veth",
            "peer",
            "name",
            "enp7s0",
            "netns",
            self.t.netns,
        )
        _ip("link", "add", "fwd0", "netns", self.t.netns, "type", "veth", "peer", "name", "eth1", "netns", self.k.netns)
        self.t.run(
            "set -e; ip link set enp7s0 up; ip link set fwd0 up; "
            "ip addr add 198.19.2.1/24 dev enp7s0; ip addr add 198.19.3.1/24 dev fwd0; "
            "ip route add 198.19.1.0/24 dev eth0; "
            f"ip -6 addr add {V6}:1::1/64 dev eth0 nodad; ip -6 addr add {V6}:2::1/64 dev enp7s0 nodad; "
            f"ip -6 addr add {V6}:3::1/64 dev fwd0 nodad; "
            "sysctl -q -w net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1"
        )
        self.s.run(
            "set -e; ip link set priv0 up; ip addr add 198.19.1.10/32 dev eth0; ip addr add 198.19.1.200/32 dev eth0; "
            f"ip addr add 198.19.2.10/24 dev priv0; ip route add 198.19.3.0/24 via {self.t4}; "
            f"ip -6 addr add {V6}:1::10/64 dev eth0 nodad; ip -6 addr add {V6}:1:8000::20/64 dev eth0 nodad; "
            f"ip -6 addr add {V6}:2::10/64 dev priv0 nodad; ip -6 route add {V6}:3::/64 via {V6}:1::1"
        )
        self.k.run(
            "set -e; ip link set eth1 up; ip addr add 198.19.3.10/24 dev eth1; "
            "ip route replace default via 198.19.3.1; "
            f"ip -6 addr add {V6}:3::10/64 dev eth1 nodad; ip -6 route add default via {V6}:3::1"
        )

    def applications(self) -> dict[str, str]:
        """T's /etc/ufw/applications.d, file name → text."""
        d = self.t.workdir / "etc-ufw" / "applications.d"
        return {p.name: p.read_text() for p in sorted(d.iterdir()) if p.is_file()}

    def load(self, case: Case, *, check: bool = False) -> dict[str, object]:
        rules = [[w.replace("{T4}", self.t4) for w in r] for r in case.rules]
        return self.target.ask(
            {
                "op": "load",
                "rules": rules,
                "incoming": case.incoming,
                "routed": case.routed,
                "ipv6": case.ipv6,
                "active": case.active,
                "check": check,
            }
        )

    def observe(self, probes: Sequence[Probe]) -> dict[str, tuple[str, str]]:
        """Send every probe; return (verdict the packets show, detail) per probe id.

        One attempt per flow, all at once, in two rounds: to T, then through T. A source gets 5 new
        connections per 30 s from all limit rules together (one xt_recent list, INPUT and FORWARD
        alike); six flows of one source at once would use up the budget of one another.
        """
        kinds: dict[str, str] = {}
        for routed in (False, True):
            batch = [p for p in probes if p.routed == routed]
            self.target.ask({"op": "clear-recent"})
            first = self.prober.ask({"op": "probe", "flows": [p.wire() for p in batch], "timeout": TIMEOUT})
            got = self._late([(p, *first[p.id]) for p in batch])  # type: ignore[misc]
            kinds.update({p.id: kind for p, kind in zip(batch, got, strict=True)})
        out: dict[str, tuple[str, str]] = {}
        for p in probes:
            kind = kinds[p.id]
            if kind == "refused":
                out[p.id] = ("reject", "refused")
            elif kind == "timeout":
                out[p.id] = ("deny", "no answer")
            elif kind not in ("open", "late"):
                out[p.id] = (kind, kind)
            else:
                out[p.id] = self._burst(p)
        return out

    def _late(self, got: Sequence[tuple[Probe, str, int]]) -> list[str]:
        """Outcomes of attempts (probe, outcome, source port); a timeout that T's conntrack tracks was let in."""
        quiet = [[p.proto, p.source.address, sport, p.dst, p.port] for p, kind, sport in got if kind == "timeout"]
        if not quiet:
            return [kind for _, kind, _ in got]
        held = self.target.ask({"op": "tracked", "flows": quiet})["tracked"]
        late = {(f[1], f[2]) for f in held}  # type: ignore[attr-defined, index]
        return ["late" if kind == "timeout" and (p.source.address, sport) in late else kind for p, kind, sport in got]

    def _burst(self, probe: Probe) -> tuple[str, str]:
        self.target.ask({"op": "clear-recent"})
        got = self.prober.ask_raw({"op": "burst", "flow": probe.wire(), "count": BURST, "timeout": TIMEOUT})
        assert isinstance(got, list)
        letter = {"open": "o", "late": "o", "refused": "r", "timeout": "t"}
        pattern = "".join(letter.get(k, "?") for k in self._late([(probe, *g) for g in got]))
        if pattern == "o" * BURST:
            return ("allow", pattern)
        if pattern == "o" * 5 + "r" * (BURST - 5):
            return ("limit", pattern)
        return (f"odd burst {pattern}", pattern)

    def close(self) -> None:
        for helper in (self.prober, self.backend, self.target):
            helper.close()


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, text=True, timeout=30)


def model_decisions(
    topo: Topology, case: Case, files: dict[str, str]
) -> tuple[dict[str, Decision], dict[str, Decision]]:
    """The model's decision per probe, from T's files: as read (tuple ports), and with profiles resolving apps."""
    ruleset = Ruleset.from_files(
        files["user.rules"],
        files["user6.rules"],
        files["defaults"],
        active=case.active,
        applications=topo.applications(),
    )
    by_profile = replace(
        ruleset,
        rules4=tuple(replace(r, app_ports=None) for r in ruleset.rules4),
        rules6=tuple(replace(r, app_ports=None) for r in ruleset.rules6),
    )
    as_read = {p.id: decide(ruleset, p.flow()) for p in topo.probes}
    resolved = {p.id: decide(by_profile, p.flow()) for p in topo.probes}
    for p in topo.probes:  # the same flows judged as part of their network's: the range split must agree
        network = RANGES.get(p.source.name)
        if network:
            (piece,) = judge(ruleset, p.flow(network)).at(p.source.address)
            if piece.decision.verdict is not as_read[p.id].verdict:
                as_read[p.id] = replace(piece.decision, why=f"as part of {network}: {piece.decision.why}")
    return as_read, resolved


@dataclass
class Tally:
    """Counts of one run."""

    cases: int = 0
    probes: int = 0
    disagreements: list[Disagreement] = field(default_factory=list)
    checks: int = 0
    check_failures: list[str] = field(default_factory=list)
    ufw_errors: int = 0
    rules: int = 0
    verdicts: dict[str, int] = field(default_factory=dict)
    decided_by: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def summary(self) -> str:
        seconds = time.monotonic() - self.started
        mix = ", ".join(f"{k} {v}" for k, v in sorted(self.verdicts.items()))
        by = ", ".join(f"{k} {v}" for k, v in sorted(self.decided_by.items()))
        return (
            f"ufw differential: {self.cases} rule sets ({self.rules} rules, {self.ufw_errors} refused by ufw), "
            f"{self.probes} flows ({mix}; decided by {by}), {len(self.disagreements)} disagreements, "
            f"{self.checks} fast-load checks ({len(self.check_failures)} failed), {seconds:.0f}s"
        )


def run_case(
    topo: Topology, case: Case, tally: Tally, *, check: bool = False, log: Callable[[str], None] | None = None
) -> None:
    """Load one rule set into T, send every probe, compare with the model; count into ``tally``."""
    answer = topo.load(case, check=check)
    files = answer["files"]
    assert isinstance(files, dict)
    messages = answer["messages"]
    assert isinstance(messages, list)
    tally.cases += 1
    tally.rules += len(case.rules)
    tally.ufw_errors += sum(1 for m in messages if str(m).startswith("ERROR"))
    if check:
        tally.checks += 1
        if answer["check"] != "same":
            tally.check_failures.append(f"{case.describe()}\n{answer['check']}")
    as_read, resolved = model_decisions(topo, case, files)
    packets = topo.observe(topo.probes)
    for p in topo.probes:
        tally.probes += 1
        seen, detail = packets[p.id]
        tally.verdicts[seen] = tally.verdicts.get(seen, 0) + 1
        by = as_read[p.id].by.value
        tally.decided_by[by] = tally.decided_by.get(by, 0) + 1
        for model in (as_read[p.id], resolved[p.id]):
            if model.verdict.value != seen:
                d = Disagreement(case, p, f"{model.verdict.value} ({model.why})", seen, detail, files)
                tally.disagreements.append(d)
                if log:
                    log(d.report())
                break
