"""Does UFW drop Flannel's VXLAN? The overlay rules, planned against each node's UFW (pure code)."""

from __future__ import annotations

from collections.abc import Sequence

from keybuzz_fix.checks.diagnose.findings import Cause, Finding, Verdicts
from keybuzz_fix.checks.diagnose.views import NodeView
from keybuzz_fix.hosts.ufw.plan import ActionKind, plan_rules
from keybuzz_fix.hosts.ufw.rules import UfwRule


def check_ufw(nodes: Sequence[NodeView], rules: Sequence[UfwRule], failing: set[str]) -> Finding:
    """UFW active, incoming denied, and no allow rule for VXLAN / the pod and service networks."""
    v = Verdicts()
    for n in nodes:
        name, facts = n.host.hostname, n.facts
        if facts is None:
            v.skipped[name] = n.error or "not probed"
        elif facts.ufw is None:
            v.skipped[name] = f"cannot read ufw: {facts.ufw_error}"
        elif not facts.ufw.installed:
            v.skipped[name] = "ufw is not installed (another firewall may still drop UDP)"
        elif not facts.ufw.active:
            v.fine[name] = ("ufw inactive",)
        elif facts.ufw.default_incoming in ("allow", None):
            v.fine[name] = (f"ufw active, default incoming {facts.ufw.default_incoming or 'unknown'}",)
        else:
            plan = plan_rules(rules, facts.ufw)
            missing = [f"missing rule: {a.rule.describe()}" for a in plan if a.kind is ActionKind.ADD and a.rule]
            blocked = [a.reason for a in plan if a.kind is ActionKind.BLOCKED]
            head = f"ufw active, default {facts.ufw.default_incoming} (incoming)"
            if missing or blocked:
                v.problem[name] = (head, *missing, *blocked)
            else:
                v.fine[name] = (head, "every overlay rule is present")
    return v.finding(
        Cause.UFW,
        failing,
        "keybuzz-fix overlay servers.tsv (adds the allow rules; removes nothing)",
        "ufw lets VXLAN and the pod and service networks in",
    )
