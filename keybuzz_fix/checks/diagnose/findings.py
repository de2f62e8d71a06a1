"""A diagnosis finding: which cause, how sure, where, the evidence and the exact fix (pure code).

Each check looks at every node and says, per node, "problem", "fine" or "not checked" (a tool, a
file, the API or the node itself was missing — never counted as fine); :class:`Verdicts` folds
that into a :class:`Finding`. A problem on a node whose live overlay probe fails there is
*confirmed*; a problem without a failing probe is *suspected*. :func:`rank` puts confirmed
findings first, then suspected, then the ones that could not be checked, then the healthy ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum


class Certainty(str, Enum):
    """How sure a finding is, best first."""

    CONFIRMED = "confirmed"  # the cause is there and a live probe fails where it is
    SUSPECTED = "suspected"  # the cause is there; no failing probe ties to it
    NOT_CHECKED = "not checked"  # some node could not be checked (tool, file, API or SSH missing)
    OK = "ok"


class Cause(str, Enum):
    """The five checks, in the order they rank within a status."""

    UFW = "ufw-vxlan"
    INTERFACE = "wrong-interface"
    MTU = "mtu"
    OFFLOAD = "checksum-offload"
    OVERLAY = "overlay"


TITLES = {
    Cause.UFW: "UFW drops VXLAN",
    Cause.INTERFACE: "Flannel on the wrong interface",
    Cause.MTU: "MTU too large for VXLAN",
    Cause.OFFLOAD: "VXLAN checksum-offload bug",
    Cause.OVERLAY: "Live overlay probe",
}
_ORDER = {s: i for i, s in enumerate(Certainty)}
_CHECKS = list(Cause)


@dataclass(frozen=True)
class Finding:
    """One ranked finding: what, how sure, where, the evidence and the exact fix."""

    check: Cause
    status: Certainty
    summary: str
    fix: str
    hosts: tuple[str, ...] = ()  # where the problem is
    evidence: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    not_checked: Mapping[str, str] = field(default_factory=dict)

    @property
    def title(self) -> str:
        """Return the check's title."""
        return TITLES[self.check]

    @property
    def problem(self) -> bool:
        """Whether the finding reports a problem."""
        return self.status in (Certainty.CONFIRMED, Certainty.SUSPECTED)


@dataclass
class Verdicts:
    """Per-host results of one check, folded into a :class:`Finding`."""

    problem: dict[str, tuple[str, ...]] = field(default_factory=dict)
    fine: dict[str, tuple[str, ...]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def finding(self, check: Cause, confirmed: set[str], fix: str, ok_summary: str) -> Finding:
        """Fold the per-node verdicts into the check's finding; ``confirmed`` are the nodes a live probe fails on."""
        hosts = tuple(self.problem)
        if hosts:
            status = Certainty.CONFIRMED if confirmed & set(hosts) else Certainty.SUSPECTED
            sure = sorted(confirmed & set(hosts))
            summary = f"on {len(hosts)} node(s)" + (
                f"; live probe fails on {', '.join(sure)}" if sure else "; the live probe does not fail there"
            )
        elif self.skipped:
            status, summary = Certainty.NOT_CHECKED, f"not checked on {len(self.skipped)} node(s)"
            fix = ""
        else:
            status, summary, fix = Certainty.OK, ok_summary, ""
        evidence = dict(self.problem) if hosts else dict(self.fine)
        return Finding(check, status, summary, fix, hosts, evidence, dict(self.skipped))


def rank(findings: Sequence[Finding]) -> list[Finding]:
    """Order findings: confirmed, suspected, not checked, ok; within a status by check."""
    return sorted(findings, key=lambda f: (_ORDER[f.status], _CHECKS.index(f.check)))


def healthy(findings: Sequence[Finding]) -> bool:
    """Whether no problem was found and the live probe passed."""
    return not any(f.problem for f in findings) and all(
        f.status is Certainty.OK for f in findings if f.check is Cause.OVERLAY
    )
