"""The VXLAN device's checksum offload as ``overlay --checksum-offload-off`` reads it: probe and pure parser.

``diagnose`` reads everything else about a node's overlay with its own script
(:mod:`keybuzz_fix.hosts.flannel.collect`, parsed by :mod:`keybuzz_fix.hosts.flannel.capture`).
"""

from __future__ import annotations

from keybuzz_fix.hosts.sections import section_header

VXLAN_DEVICE = "flannel.1"
OFFLOAD_FEATURE = "tx-checksum-ip-generic"
UDEV_DIR = "/etc/udev/rules.d"
UDEV_RULE = f"{UDEV_DIR}/90-keybuzz-fix-flannel-offload.rules"

# What ``overlay --checksum-offload-off`` reads: where ethtool is, flannel.1's features, the udev rule. Its sections'
# names are its own: the UFW probe runs in the same script.
OFFLOAD_PROBE = (
    f"{section_header('offload-ethtool')}; command -v ethtool 2>/dev/null; "
    f"if command -v ethtool >/dev/null 2>&1; then {section_header('offload-features')}; "
    f"LC_ALL=C ethtool -k {VXLAN_DEVICE} 2>&1; fi; "
    f"if [ -f {UDEV_RULE} ]; then {section_header('offload-rule')}; cat {UDEV_RULE}; "
    f"else {section_header('offload-no-rule')}; fi; {section_header('offload-end')}"
)


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
