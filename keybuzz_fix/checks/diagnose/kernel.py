"""Is it the kernel's VXLAN checksum-offload bug? The kernel version, ethtool and the kernel log (pure code)."""

from __future__ import annotations

from collections.abc import Sequence

from keybuzz_fix.checks.diagnose.findings import Cause, Finding, Verdicts
from keybuzz_fix.checks.diagnose.views import NodeView
from keybuzz_fix.hosts.flannel.facts import OFFLOAD_FEATURE, VXLAN_DEVICE, bad_checksum_lines, parse_kernel_version

OFFLOAD_FIXED_IN = (5, 7)


def check_offload(nodes: Sequence[NodeView], vxlan_port: int, dns_failed: set[str]) -> Finding:
    """Checksum offload left on for flannel.1 on a kernel older than 5.7, or bad checksums logged."""
    v = Verdicts()
    confirmed = set(dns_failed)
    for n in nodes:
        name, facts = n.host.hostname, n.facts
        if facts is None:
            v.skipped[name] = n.error or "not probed"
            continue
        logged = bad_checksum_lines(facts.kernel_log, vxlan_port) if facts.kernel_log is not None else []
        kernel = parse_kernel_version(facts.kernel)
        note = [] if facts.kernel_log is not None else ["kernel log not readable (dmesg)"]
        if logged:
            confirmed.add(name)
            v.problem[name] = (f"kernel log: {len(logged)} bad checksum line(s) for port {vxlan_port}", *logged[-3:])
        elif kernel is None:
            v.skipped[name] = f"unknown kernel version {facts.kernel!r}"
        elif kernel >= OFFLOAD_FIXED_IN:
            v.fine[name] = (f"kernel {facts.kernel} (fixed since 5.7)", *note)
        elif facts.flannel is None:
            v.skipped[name] = f"kernel {facts.kernel} is older than 5.7 but there is no {VXLAN_DEVICE} to read"
        elif facts.offload is None:
            v.skipped[name] = f"kernel {facts.kernel} is older than 5.7 and ethtool is not installed"
        elif facts.offload.get(OFFLOAD_FEATURE, (False, False))[0]:
            v.problem[name] = (
                f"kernel {facts.kernel} is older than 5.7",
                f"{OFFLOAD_FEATURE}: on ({VXLAN_DEVICE})",
                *note,
            )
        else:
            v.fine[name] = (f"kernel {facts.kernel}, {OFFLOAD_FEATURE}: off", *note)
    fix = (
        "Upgrade the kernel (5.7 or later) or K3s; or run `keybuzz-fix overlay servers.tsv --checksum-offload-off` "
        f"(`ethtool -K {VXLAN_DEVICE} {OFFLOAD_FEATURE} off`, kept by a udev rule)"
    )
    return v.finding(Cause.OFFLOAD, confirmed, fix, "no checksum-offload bug on any node")
