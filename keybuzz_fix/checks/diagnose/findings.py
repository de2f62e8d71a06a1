"""A finding, the causes' stable ids, and the ranking by consistency with the path matrix (pure code).

Each check looks for one cause on every node and returns a :class:`Finding`: whether the cause is
there (``present``), where, the evidence (command and output excerpt), the fix, and which paths
of the matrix it would break: ``breaks`` (paths that must fail if the cause is real) and
``may_break`` (paths it can explain failing, e.g. a bug that hits only some packets).

:func:`rank` confronts every present cause with the matrix: a cause that explains every failing
path ranks first; one whose predicted failures contradict paths that work is demoted; causes
that explain nothing that fails are latent ("likely"). ``confirmed`` needs the cause seen on the
node *and* a failing path it explains, without contradiction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

from keybuzz_fix.checks.diagnose.paths import Path


class Status(str, Enum):
    """How sure a finding is, best first."""

    CONFIRMED = "confirmed"  # seen on the node, and it explains failing paths without contradiction
    LIKELY = "likely"  # seen, but not tied to a failure (or contradicted); or inferred from the matrix alone
    NOT_CHECKED = "not checked"  # a tool, a file, the API or the node itself was missing
    OK = "ok"


class Cause(str, Enum):
    """The causes, with their stable ids (README), in the order they rank when all else is equal."""

    UFW_VXLAN = "ufw-blocks-vxlan"
    HOST_FIREWALL = "host-firewall-blocks-pods"
    OTHER_FIREWALL = "other-firewall"
    FORWARD_DROP = "forward-drop"
    BACKEND_SPLIT = "iptables-backend-split"
    BR_NETFILTER = "br-netfilter-off"
    WRONG_INTERFACE = "wrong-interface"
    VTEP_ADDRESS = "vtep-address"
    VTEP_MAC = "vtep-mac-mismatch"
    MTU = "mtu"
    CHECKSUM = "checksum-offload"
    UNDERLAY = "underlay-drops-vxlan"
    COREDNS = "coredns"
    NETWORK_POLICY = "network-policy"
    KERNEL_MODULES = "kernel-modules"
    BACKEND = "backend"


TITLES = {
    Cause.UFW_VXLAN: "UFW drops the overlay's packets from the other nodes",
    Cause.HOST_FIREWALL: "The host firewall drops traffic from pods and Services to the node",
    Cause.OTHER_FIREWALL: "Another firewall (firewalld, nftables, iptables REJECT/DROP) drops cluster traffic",
    Cause.FORWARD_DROP: "FORWARD policy DROP without accepts for the pod network",
    Cause.BACKEND_SPLIT: "iptables rules split between the legacy and nf_tables backends",
    Cause.BR_NETFILTER: "br_netfilter off: replies from a same-node backend skip un-DNAT",
    Cause.WRONG_INTERFACE: "Flannel on the wrong interface",
    Cause.VTEP_ADDRESS: "VTEP addresses duplicated or unreachable",
    Cause.VTEP_MAC: "VXLAN device MAC differs from what the peers were told",
    Cause.MTU: "MTU larger than the path allows",
    Cause.CHECKSUM: "VXLAN checksum-offload bug",
    Cause.UNDERLAY: "The network between the nodes drops the overlay's packets",
    Cause.COREDNS: "CoreDNS without endpoints, crash-looping or in a forwarding loop",
    Cause.NETWORK_POLICY: "A NetworkPolicy denies DNS or the traffic",
    Cause.KERNEL_MODULES: "The running kernel's modules are gone",
    Cause.BACKEND: "Flannel backend",
}
_STATUS = {s: i for i, s in enumerate(Status)}
_CAUSES = list(Cause)

Evidence = Mapping[str, tuple[str, ...]]  # where (a node, or "cluster") -> lines: "$ command" then output


@dataclass(frozen=True)
class Finding:
    """One ranked finding: which cause, how sure, where, the evidence, the fix, and how it fits the matrix."""

    cause: Cause
    status: Status
    summary: str
    fix: str = ""
    hosts: tuple[str, ...] = ()
    evidence: Evidence = field(default_factory=dict)
    not_checked: Mapping[str, str] = field(default_factory=dict)
    explains: tuple[str, ...] = ()  # failing paths it explains
    contradicts: tuple[str, ...] = ()  # working paths it says must fail
    info: bool = False  # informational (the backend): never a problem

    @property
    def title(self) -> str:
        """Return the cause's title."""
        return TITLES[self.cause]

    @property
    def problem(self) -> bool:
        """Whether the finding reports a problem."""
        return not self.info and self.status in (Status.CONFIRMED, Status.LIKELY)


@dataclass(frozen=True)
class Candidate:
    """What a check found, before the matrix judges it."""

    cause: Cause
    present: bool | None  # None: could not be checked anywhere
    summary: str
    fix: str = ""
    hosts: tuple[str, ...] = ()
    evidence: Evidence = field(default_factory=dict)
    not_checked: Mapping[str, str] = field(default_factory=dict)
    breaks: Callable[[Path], bool] | None = None  # paths that must fail
    may_break: Callable[[Path], bool] | None = None  # paths it can explain failing (default: breaks)
    inferred: bool = False  # only the matrix says so: at most likely
    seen: bool = True  # the condition itself was seen (a counter, a log line, a rule): confirmable
    info: bool = False


def judge(c: Candidate, paths: Sequence[Path]) -> Finding:
    """Confront one candidate with the matrix and return its finding."""
    if c.info:
        return Finding(c.cause, Status.OK, c.summary, "", c.hosts, c.evidence, c.not_checked, info=True)
    if not c.present:
        status = Status.NOT_CHECKED if c.present is None else Status.OK
        return Finding(c.cause, status, c.summary, "", (), c.evidence, c.not_checked)
    must = c.breaks or (lambda p: False)
    may = c.may_break or must
    explains = tuple(p.id for p in paths if p.failed and (may(p) or must(p)))
    contradicts = tuple(p.id for p in paths if p.ok and must(p))
    if contradicts and not explains:  # what the probes saw beats what the rules say
        summary = f"{c.summary}; but the {len(contradicts)} path(s) it would break work: not a cause here"
        return Finding(c.cause, Status.OK, summary, "", c.hosts, c.evidence, c.not_checked, (), contradicts)
    status = Status.CONFIRMED if explains and not contradicts and c.seen and not c.inferred else Status.LIKELY
    summary = c.summary
    if contradicts:
        summary += f"; but {len(contradicts)} path(s) it should break work"
    elif explains:
        summary += f"; explains {len(explains)} failing path(s)"
    return Finding(c.cause, status, summary, c.fix, c.hosts, c.evidence, c.not_checked, explains, contradicts)


def rank(findings: Sequence[Finding], paths: Sequence[Path]) -> list[Finding]:
    """Order findings: problems first, then the backend in use, then not checked, then ok.

    Among problems: those explaining every failing path first, then the uncontradicted, confirmed before
    likely, the most failing paths explained.
    """
    failed = {p.id for p in paths if p.failed}

    def key(f: Finding) -> tuple[int, int, int, int, int, int]:
        if not f.problem:  # the backend first (it says what every check adapted to), then not checked, then ok
            return (1, 0 if f.info else 1, 0, 0, _STATUS[f.status], _CAUSES.index(f.cause))
        covers_all = bool(failed) and failed <= set(f.explains)
        return (
            0,
            0 if covers_all else 1,
            len(f.contradicts) and 1,
            _STATUS[f.status],
            -len(set(f.explains) & failed) * 100 + len(f.contradicts),
            _CAUSES.index(f.cause),
        )

    return sorted(findings, key=key)


def healthy(findings: Sequence[Finding], paths: Sequence[Path]) -> bool:
    """Whether no problem was found and no probed path failed."""
    return not any(f.problem for f in findings) and not any(p.failed for p in paths)
