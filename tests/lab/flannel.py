"""Flannel's VXLAN data path on lab hosts, built the way flanneld builds it on a K3s node.

Each host gets ``flannel.1`` (VNI 1, dstport 8472, local = its lab address, on eth0, nolearning)
with the VTEP MAC the seeded Node announces, the ``.0`` address of its podCIDR, and for every
peer: a permanent neighbour entry (peer's ``.0`` -> peer's VTEP MAC), a forwarding entry (peer's
VTEP MAC -> peer's lab address) and a route to the peer's podCIDR via its ``.0``, onlink. It also
writes ``/run/flannel/subnet.env`` (each host has its own /run). Everything stays in 198.18.0.0/15.

    with_flannel(lab, {"k8s-worker-01": "198.19.3.0/24", ...})

``private_etc`` gives a host a copy-on-write /etc (an overlay in its own mount namespace), so a
command that writes under /etc inside the host (the udev rule of ``overlay --checksum-offload-off``)
never touches this machine's /etc.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from tests.cluster.seed import vtep_mac
from tests.lab.hosts import LAB_RANGE, Lab, LabHost

DEVICE = "flannel.1"
VNI = 1
PORT = 8472
MTU = 1450
POD_NETWORK = "198.19.0.0/17"  # the seeded podCIDRs are 198.19.N.0/24; Services use 198.19.128.0/20


@dataclass(frozen=True)
class Vtep:
    """One node's end of the overlay."""

    name: str
    ip: str  # the lab address VXLAN packets leave from
    pod_cidr: str

    @property
    def address(self) -> str:
        """flannel.1's address: the podCIDR's network address, as Flannel assigns it."""
        return str(ipaddress.ip_network(self.pod_cidr).network_address)

    @property
    def mac(self) -> str:
        """The VTEP MAC, the same one the seeded Node's backend-data annotation carries."""
        return vtep_mac(self.name)


def _in_lab(*addresses: str) -> None:
    for a in addresses:
        net = ipaddress.ip_network(a, strict=False)
        if not net.subnet_of(LAB_RANGE):  # type: ignore[arg-type]
            raise ValueError(f"{a} is outside the lab range {LAB_RANGE}")


def vtep_script(me: Vtep, peers: list[Vtep], mtu: int = MTU) -> str:
    """Return the shell commands that build ``me``'s side of the overlay (idempotent: replaces)."""
    _in_lab(me.ip, me.pod_cidr, *(p.ip for p in peers), *(p.pod_cidr for p in peers))
    subnet = ipaddress.ip_network(me.pod_cidr)
    lines = [
        "set -e",
        f"ip link del {DEVICE} 2>/dev/null || true",
        f"ip link add {DEVICE} type vxlan id {VNI} local {me.ip} dev eth0 dstport {PORT} nolearning",
        f"ip link set {DEVICE} address {me.mac} mtu {mtu}",
        f"ip addr add {me.address}/32 dev {DEVICE}",
        f"ip link set {DEVICE} up",
    ]
    for p in peers:
        lines += [
            f"ip neigh replace {p.address} lladdr {p.mac} dev {DEVICE} nud permanent",
            f"bridge fdb replace {p.mac} dev {DEVICE} dst {p.ip} self permanent",
            f"ip route replace {p.pod_cidr} via {p.address} dev {DEVICE} onlink",
        ]
    env = (
        f"FLANNEL_NETWORK={POD_NETWORK}\nFLANNEL_SUBNET={subnet.network_address + 1}/{subnet.prefixlen}\n"
        f"FLANNEL_MTU={mtu}\nFLANNEL_IPMASQ=true\n"
    )
    lines += ["mkdir -p /run/flannel", f"printf '%s' {shlex.quote(env)} > /run/flannel/subnet.env"]
    return "\n".join(lines)


def with_flannel(lab: Lab, pod_cidrs: Mapping[str, str], mtu: int = MTU) -> dict[str, Vtep]:
    """Build the overlay between the named lab hosts (name -> podCIDR); return their VTEPs."""
    vteps = {name: Vtep(name, lab.host(name).ip, cidr) for name, cidr in pod_cidrs.items()}
    for name, me in vteps.items():
        lab.host(name).run(vtep_script(me, [p for n, p in vteps.items() if n != name], mtu))
    return vteps


def without_flannel(lab: Lab, names: list[str]) -> None:
    """Remove flannel.1 (and with it its neighbours, forwarding entries and routes) and subnet.env."""
    for name in names:
        lab.host(name).run(f"ip link del {DEVICE} 2>/dev/null || true; rm -rf /run/flannel")


def ping(host: LabHost, address: str, count: int = 2) -> bool:
    """Whether ``address`` (in the lab range) answers a ping from inside ``host``."""
    _in_lab(address)
    return host.run(f"ping -n -q -c {count} -i 0.2 -W 1 {address}", check=False).returncode == 0


def private_etc(host: LabHost) -> None:
    """Put a copy-on-write overlay on the host's /etc, keeping the lab's own mounts under /etc on top."""
    d = host.workdir / "etc-overlay"
    script = f"""set -e
d={shlex.quote(str(d))}
if awk '$5 == "/etc"' /proc/self/mountinfo | grep -q .; then exit 0; fi
mkdir -p "$d/upper" "$d/work" "$d/keep"
mps=$(awk '$5 ~ "^/etc/" {{print $5}}' /proc/self/mountinfo)
i=0
for m in $mps; do
  if [ -d "$m" ]; then mkdir -p "$d/keep/$i"; else : > "$d/keep/$i"; fi
  mount --bind "$m" "$d/keep/$i"; i=$((i+1))
done
mount -t overlay kbl-etc -o "lowerdir=/etc,upperdir=$d/upper,workdir=$d/work" /etc
i=0
for m in $mps; do mount --move "$d/keep/$i" "$m"; i=$((i+1)); done
"""
    host.run(script)
