"""The kernel: br_netfilter, the VXLAN checksum-offload bug (judged by counters), modules gone (pure code)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from keybuzz_fix.checks.diagnose.findings import Candidate, Cause
from keybuzz_fix.checks.diagnose.paths import Path, Topology
from keybuzz_fix.checks.diagnose.views import NodeView

BRIDGE_NF = "net.bridge.bridge-nf-call-iptables"
OFFLOAD = "tx-checksum-ip-generic"
# Stable trees that got the fix (ea64d8d6c675, "netfilter: ... csum"): older ones in each are affected.
FIXED_IN = {(5, 6): (5, 6, 13), (5, 4): (5, 4, 41), (4, 19): (4, 19, 123), (4, 14): (4, 14, 181)}


def br_netfilter(nodes: Sequence[NodeView], paths: Sequence[Path]) -> Candidate:
    """``br_netfilter`` not loaded or ``bridge-nf-call-iptables=0``: a same-node backend's reply skips un-DNAT."""
    bad: dict[str, tuple[str, ...]] = {}
    skipped: dict[str, str] = {}
    for n in nodes:
        c = n.capture
        if c is None:
            skipped[n.name] = n.error or "not probed"
            continue
        if BRIDGE_NF not in c.sysctl:
            skipped[n.name] = "sysctl not read"
            continue
        value = c.sysctl[BRIDGE_NF]
        if value is None:
            loaded = "br_netfilter" in (c.modules or ())
            bad[n.name] = (
                "$ cat /proc/sys/net/bridge/bridge-nf-call-iptables",
                "No such file or directory (br_netfilter not loaded)",
                "$ ls /sys/module/br_netfilter",
                "present" if loaded else "No such file or directory",
            )
        elif value.strip() != "1":
            bad[n.name] = ("$ cat /proc/sys/net/bridge/bridge-nf-call-iptables", value.strip())
    for p in paths:
        if p.src in bad and p.probe.result == "wrong-source":
            bad[p.src] = (*bad[p.src], *p.evidence())

    def must(p: Path) -> bool:
        return p.source == "pod" and p.service and p.src in bad and p.all_hops(lambda h: h.same_node_pod)

    return Candidate(
        Cause.BR_NETFILTER,
        bool(bad) or (None if len(skipped) == len(nodes) else False),
        f"on {', '.join(bad)}" if bad else "bridged pod traffic goes through iptables",
        "On " + ", ".join(bad or ["the node"]) + ": `modprobe br_netfilter; sysctl -w "
        "net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1`, persisted in "
        "/etc/modules-load.d/k3s.conf and /etc/sysctl.d/90-k3s.conf",
        tuple(bad),
        bad,
        skipped,
        breaks=must,
    )


def affected_kernel(release: str | None) -> bool | None:
    """Whether a kernel is in the range of the VXLAN/NAT checksum bug by its version (None: unknown).

    Version alone never decides a finding: the bug was backported (5.4.41, 4.19.123, 4.14.181) and
    reappeared with flannel v0.26 on 6.8; the counters do.
    """
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release or "")
    if m is None:
        return None
    v = (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))
    if v[:2] == (6, 8):
        return True
    if v[:2] in FIXED_IN:
        return v < FIXED_IN[v[:2]]
    return v < (5, 7, 0)


def checksum(nodes: Sequence[NodeView], topo: Topology, vxlan_port: int | None) -> Candidate:
    """VXLAN packets dropped for a bad UDP checksum: ``UdpInCsumErrors`` rising on receivers, or old kernels' log."""
    seen: dict[str, tuple[str, ...]] = {}
    skipped: dict[str, str] = {}
    for n in nodes:
        c, t = n.capture, topo.tunnels.get(n.name)
        if c is None:
            skipped[n.name] = n.error or "not probed"
            continue
        if t is None or t.kind != "vxlan":
            continue
        port = t.port or vxlan_port or 8472
        feats = c.features.get(t.device or "", {})
        nic_feats = c.features.get(t.underlay or "", {})
        on = [
            f"{dev}: {OFFLOAD}: on" + (f" (driver {c.drivers[dev]})" if dev in c.drivers else "")
            for dev, f in ((t.device, feats), (t.underlay, nic_feats))
            if dev and f.get(OFFLOAD, (False, False))[0]
        ]
        counters = c.csum_errors()
        logged = [line for line in c.kernel_log or () if "bad checksum" in line.lower() and f":{port}" in line]
        lines: list[str] = []
        if counters is not None and counters[1] > counters[0]:
            lines += [
                "$ grep Udp: /proc/net/snmp (before and after the probes)",
                f"UdpInCsumErrors {counters[0]} -> {counters[1]}",
            ]
        if logged:
            lines += ["$ dmesg | grep -i 'bad checksum'", *logged[-3:]]
        if lines:
            seen[n.name] = (*lines, f"$ ethtool -k {t.device} ; uname -r", *(on or ["offload off"]), c.kernel or "")
        elif counters is None and on and affected_kernel(c.kernel):
            skipped[n.name] = (
                f"{t.device}: {OFFLOAD} on, kernel {c.kernel} in the bug's range by version, but UdpInCsumErrors "
                "was not read: the version alone decides nothing"
            )
        elif counters is None and not c.kernel_log:
            skipped[n.name] = "UdpInCsumErrors not read (/proc/net/snmp) and no kernel log"
    where = seen

    def may(p: Path) -> bool:  # the bug is the kernel's and the driver's: any VXLAN packet may be hit
        return p.any_hop(lambda h: h.overlay)

    devices = sorted({t.device for t in topo.tunnels.values() if t.device}) or ["flannel.1"]
    fix = (
        "Turn the offload off on the VXLAN device: `"
        + "; ".join(f"ethtool -K {d} {OFFLOAD} off" for d in devices)
        + "` (`keybuzz-fix overlay servers.tsv --checksum-offload-off` does it and keeps it with a udev rule); "
        "the lasting fix is a kernel or kube-proxy/flannel with the fix (kube-proxy 1.18.6+, kernel 5.6.13/5.4.41/"
        "4.19.123/4.14.181+; flannel v0.26 on 6.8 still needs the workaround)"
    )
    return Candidate(
        Cause.CHECKSUM,
        bool(where) or (None if skipped else False),
        f"on {', '.join(sorted(where))}" if where else "UdpInCsumErrors did not move on any node",
        fix,
        tuple(sorted(where)),
        where,
        skipped,
        may_break=may,
        seen=bool(seen),
    )


def kernel_modules(nodes: Sequence[NodeView], topo: Topology) -> Candidate:
    """The running kernel's modules are gone (upgraded, not rebooted) and something the overlay needs is missing."""
    bad: dict[str, tuple[str, ...]] = {}
    skipped: dict[str, str] = {}
    for n in nodes:
        c, t = n.capture, topo.tunnels.get(n.name)
        if c is None or c.lib_modules is None:
            skipped[n.name] = n.error or "modules not read"
            continue
        if c.lib_modules:
            continue
        missing = []
        if c.sysctl.get(BRIDGE_NF, "") is None:
            missing.append("br_netfilter (no /proc/sys/net/bridge)")
        if t is not None and t.kind == "none":
            missing.append("no overlay device (vxlan/wireguard) on the node")
        if missing:
            bad[n.name] = (
                "$ ls -d /lib/modules/$(uname -r)",
                f"No such file or directory (running {c.kernel})",
                *missing,
            )
    return Candidate(
        Cause.KERNEL_MODULES,
        bool(bad) or (None if len(skipped) == len(nodes) else False),
        f"on {', '.join(bad)}" if bad else "the running kernel's modules are there (or everything needed is loaded)",
        "Reboot " + ", ".join(bad or ["the node"]) + " into the installed kernel (its modules were removed by an "
        "upgrade), then check `lsmod | grep -e vxlan -e br_netfilter`",
        tuple(bad),
        bad,
        skipped,
        may_break=lambda p: p.src in bad or p.any_hop(lambda h: h.node in bad),
    )
