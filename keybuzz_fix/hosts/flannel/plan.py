"""What ``overlay`` wants on every K3s node, as pure code: UFW rules for Flannel, and the offload fix.

Flannel's VXLAN packets arrive as UDP on port 8472 from the other nodes' private addresses; once
decapsulated they enter again, on ``flannel.1``, from the pod network, and packets to Services come
from the service network. K3s documents one allow rule for each (see :func:`overlay_rules`).

``--checksum-offload-off`` adds a change outside UFW: ``ethtool -K flannel.1
tx-checksum-ip-generic off`` now, and a udev rule that does it again whenever Flannel recreates
``flannel.1`` (after a reboot or a K3s restart). Its probe and plan ride in the UFW run as
:data:`OFFLOAD`, a :class:`~keybuzz_fix.hosts.ufw.run.HostExtra`.
"""

from __future__ import annotations

import re
import shlex

from keybuzz_fix.config import OverlayConfig
from keybuzz_fix.hosts.flannel.facts import (
    OFFLOAD_FEATURE,
    OFFLOAD_PROBE,
    UDEV_DIR,
    UDEV_RULE,
    VXLAN_DEVICE,
    parse_features,
)
from keybuzz_fix.hosts.sections import split_sections
from keybuzz_fix.hosts.ufw.plan import Action, ActionKind
from keybuzz_fix.hosts.ufw.rules import UfwRule
from keybuzz_fix.hosts.ufw.run import HostExtra, Wanted, WantedRule

ETHTOOL_OFF = f"ethtool -K {VXLAN_DEVICE} {OFFLOAD_FEATURE} off"
_PATH = re.compile(r"^/[A-Za-z0-9_./+-]{1,200}$")


def overlay_rules(cfg: OverlayConfig) -> list[UfwRule]:
    """Return the UFW rules Flannel's VXLAN needs: 8472/udp from the nodes, all from pods and Services."""
    return [
        UfwRule(
            action="allow",
            port=str(cfg.vxlan_port),
            proto="udp",
            source=cfg.source,
            comment="keybuzz-fix: flannel VXLAN",
        ),
        UfwRule(action="allow", source=cfg.pod_cidr, comment="keybuzz-fix: pod network"),
        UfwRule(action="allow", source=cfg.service_cidr, comment="keybuzz-fix: service network"),
    ]


def overlay_wanted(cfg: OverlayConfig) -> Wanted:
    """Return :func:`overlay_rules` with the purpose of each, for the plan."""
    why = (
        "Flannel's VXLAN packets between the nodes (the overlay every ClusterIP and CoreDNS lookup crosses)",
        "traffic from pods to the node (DNS, the API server through the kubernetes Service)",
        "traffic from Service addresses (kube-proxy's ClusterIPs) to the node",
    )
    where = ("config overlay.source, overlay.vxlan_port", "config overlay.pod_cidr", "config overlay.service_cidr")
    rules = overlay_rules(cfg)
    return Wanted(tuple(WantedRule(r, w, f) for r, w, f in zip(rules, why, where, strict=True)), "config")


def udev_rule(ethtool: str) -> str:
    """Return the udev rule that turns the offload off each time ``flannel.1`` appears."""
    return (
        f"# keybuzz-fix: Flannel VXLAN checksum-offload workaround ({OFFLOAD_FEATURE} off on {VXLAN_DEVICE})\n"
        f'ACTION=="add", SUBSYSTEM=="net", KERNEL=="{VXLAN_DEVICE}", '
        f'RUN+="{ethtool} -K {VXLAN_DEVICE} {OFFLOAD_FEATURE} off"\n'
    )


def write_rule_command(content: str) -> str:
    """Return the command that writes the udev rule atomically (temporary file, then rename)."""
    tmp = f"{UDEV_DIR}/.{UDEV_RULE.rsplit('/', 1)[1]}.tmp"  # udev reads only *.rules
    lines = " ".join(shlex.quote(line) for line in content.splitlines())
    return f"mkdir -p {UDEV_DIR} && printf '%s\\n' {lines} > {tmp} && chmod 644 {tmp} && mv -f {tmp} {UDEV_RULE}"


def plan_offload(stdout: str) -> list[Action]:
    """Plan the offload fix on one host from the output of :data:`OFFLOAD_PROBE`."""
    sections = split_sections(stdout)
    if "offload-end" not in sections:
        return [Action(ActionKind.BLOCKED, "checksum offload: probe output was cut short; nothing changed")]
    found = [line.strip() for line in sections.get("offload-ethtool", []) if line.strip()]
    if not found:
        return [
            Action(
                ActionKind.BLOCKED, "checksum offload not changed: ethtool is not installed (apt-get install ethtool)"
            )
        ]
    ethtool = found[0]
    if not _PATH.match(ethtool):
        return [Action(ActionKind.BLOCKED, f"checksum offload not changed: odd ethtool path {ethtool[:80]!r}")]
    actions: list[Action] = []
    features = parse_features("\n".join(sections.get("offload-features", [])))
    state = features.get(OFFLOAD_FEATURE)
    if not features:
        actions.append(
            Action(
                ActionKind.NOOP,
                f"{VXLAN_DEVICE} does not exist (yet): the udev rule turns "
                f"{OFFLOAD_FEATURE} off when Flannel creates it",
            )
        )
    elif state is None:
        actions.append(Action(ActionKind.NOOP, f"{VXLAN_DEVICE} has no {OFFLOAD_FEATURE} feature"))
    elif not state[0]:
        actions.append(Action(ActionKind.NOOP, f"{OFFLOAD_FEATURE} already off on {VXLAN_DEVICE}"))
    elif state[1]:
        actions.append(
            Action(
                ActionKind.BLOCKED,
                f"{OFFLOAD_FEATURE} is on and [fixed] on {VXLAN_DEVICE}: the driver does not let it change",
            )
        )
    else:
        actions.append(Action(ActionKind.CHANGE, f"turn {OFFLOAD_FEATURE} off on {VXLAN_DEVICE}", script=ETHTOOL_OFF))
    want = udev_rule(ethtool)
    have = "\n".join(sections["offload-rule"]) + "\n" if "offload-rule" in sections else None
    if have == want:
        actions.append(Action(ActionKind.NOOP, f"udev rule already in place: {UDEV_RULE}"))
    else:
        verb = "write" if have is None else "rewrite"
        actions.append(
            Action(
                ActionKind.CHANGE,
                f"{verb} {UDEV_RULE} so the setting survives reboots and K3s restarts",
                script=write_rule_command(want),
            )
        )
    return actions


OFFLOAD = HostExtra(OFFLOAD_PROBE, plan_offload)
