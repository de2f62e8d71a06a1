"""diagnose's first pod address of a node against the allocator K3s' flannel really uses.

When no pod was captured, ``diagnose`` judges the pods-to-API-server flow from the first address
of the node's pod subnet (:func:`keybuzz_fix.checks.diagnose.firewall._first_pod`). K3s' CNI
config (k3s pkg/agent/flannel/setup_osspecific.go, 10-flannel.conflist) runs flannel's CNI plugin,
which delegates to ``bridge`` with an ``ipam`` section it builds itself: ``host-local`` with one
range, ``subnet`` being FLANNEL_SUBNET masked to its network (flannel-io/cni-plugin, flannel.go
``loadFlannelSubnetEnv``, flannel_linux.go ``getDelegateIPAM``); ``bridge`` hands its own stdin to
host-local. Here the real host-local (containernetworking/plugins, CNI_PLUGINS_VERSION of
tests/cluster/versions.env, built by tests/cluster/build) is run the same way, CNI_COMMAND=ADD in
an empty data directory, for generated pod subnets: IPv4 /8…/32 (many /24, flannel's default),
IPv6 /48…/128 (many /64), half of them written with host bits set as cni0's address and
FLANNEL_SUBNET are (10.42.1.1/24). The first address it hands out must be ``_first_pod``'s; where it
refuses the subnet as too small (/31, /32, /127, /128), ``_first_pod`` must say None (no pod
address). A subnet written with host bits set is refused by host-local as written ("Network has
host bits set", or as too small first when it is), which is why flannel masks it first; the model
masks it the same way.

``KBF_HOSTLOCAL_DIFFERENTIAL_CASES`` changes the number of pod subnets (200 by default, fixed seed).
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from keybuzz_fix.checks.diagnose.firewall import _first_pod
from keybuzz_fix.checks.diagnose.paths import Topology
from tests.cluster.controlplane import ControlPlaneError, build_binaries, read_versions

pytestmark = pytest.mark.integration
CASES = int(os.environ.get("KBF_HOSTLOCAL_DIFFERENTIAL_CASES", "200"))
SEED = 20261130
# Always in: the lab's shapes, the smallest subnets host-local takes and the ones it refuses.
LANDMARKS = (
    "10.42.0.0/24",
    "10.42.1.0/24",
    "10.42.1.1/24",
    "10.42.1.5/24",
    "10.0.0.0/8",
    "10.42.0.0/16",
    "10.42.1.4/30",
    "10.42.1.4/31",
    "10.42.1.4/32",
    "fd00:42::/48",
    "fd00:42:1::/64",
    "fd00:42:1::1/64",
    "fd00::4/126",
    "fd00::4/127",
    "fd00::4/128",
)


@dataclass(frozen=True)
class Answer:
    """What host-local said for one subnet: the address it handed out, or the reason it refused."""

    address: str | None
    refused: str = ""


@pytest.fixture(scope="module")
def host_local() -> Path:
    """The pinned host-local binary; its absence fails the test, as the control plane's does."""
    try:
        bin_dir = Path(os.environ["KEYBUZZ_FIX_BIN_DIR"]) if "KEYBUZZ_FIX_BIN_DIR" in os.environ else build_binaries()
    except ControlPlaneError as e:
        pytest.fail(f"cannot build host-local: {e}", pytrace=False)
    path = bin_dir / "host-local"
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: run tests/cluster/build", pytrace=False)
    # Without CNI_COMMAND the plugin prints its build string (pkg/utils/buildversion) and stops.
    about = subprocess.run([str(path)], capture_output=True, text=True, timeout=30, env={}, check=False)
    want = f"CNI host-local plugin {read_versions()['CNI_PLUGINS_VERSION']}"
    assert want in about.stderr, (want, about.stderr)
    return path


def cidrs(rng: random.Random, count: int) -> list[str]:
    """The landmarks, then generated pod subnets, aligned or written with host bits set."""
    out = list(LANDMARKS[:count])
    while len(out) < count:
        v6 = rng.random() < 0.5
        bits = 128 if v6 else 32
        prefix = (64 if v6 else 24) if rng.random() < 0.3 else rng.randint(48 if v6 else 8, bits)
        address = rng.getrandbits(bits)
        if rng.random() < 0.5:
            address &= ~((1 << (bits - prefix)) - 1)  # aligned: as a node's podCIDR is written
        ip = ipaddress.IPv6Address(address) if v6 else ipaddress.IPv4Address(address)
        out.append(f"{ip}/{prefix}")
    return out


def allocate(host_local: Path, subnet: str, workdir: Path) -> Answer:
    """Run host-local's ADD the way bridge delegates to it, in an empty data directory."""
    net = ipaddress.ip_network(subnet, strict=False)
    pod_network = net.supernet(new_prefix=min(net.prefixlen, 48 if net.version == 6 else 16))
    conf = {  # flannel's delegate with K3s' options, as flannel-io/cni-plugin builds it
        "cniVersion": "1.0.0",
        "name": "cbr0",
        "type": "bridge",
        "hairpinMode": True,
        "forceAddress": True,
        "isDefaultGateway": True,
        "isGateway": True,
        "ipMasq": False,
        "mtu": 1450,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": subnet}]],
            "routes": [{"dst": str(pod_network)}],
            "dataDir": str(workdir / "networks"),  # its default is /var/lib/cni/networks
        },
    }
    env = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": workdir.name,
        # host-local never enters the pod's netns; after ADD, the CNI library (cni v1.3.1,
        # pkg/skel/skel.go, pkg/ns/ns_linux.go CheckNetNS) only refuses its own netns, and takes a
        # path it cannot open.
        "CNI_NETNS": str(workdir / "netns"),
        "CNI_IFNAME": "eth0",
        "CNI_PATH": str(host_local.parent),
    }
    proc = subprocess.run(
        [str(host_local)], input=json.dumps(conf), capture_output=True, text=True, env=env, timeout=30, check=False
    )
    said = json.loads(proc.stdout)
    if proc.returncode != 0:
        return Answer(None, said["msg"])
    (ip,) = said["ips"]
    return Answer(str(ip["address"]).split("/")[0])


def test_first_pod_is_the_address_host_local_hands_out(host_local: Path, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    kinds = {"answered v4": 0, "answered v6": 0, "too small": 0, "host bits set": 0}
    wrong: list[str] = []
    subnets = cidrs(rng, CASES)
    for i, written in enumerate(subnets):
        net = ipaddress.ip_network(written, strict=False)
        topo = Topology(addresses={}, subnets={written: "k3s-node-01"}, tunnels={}, private={})
        model = _first_pod(topo, "k3s-node-01")
        real = allocate(host_local, str(net), tmp_path / f"c{i:04d}")
        if real.address is not None:
            kinds[f"answered v{net.version}"] += 1
        elif "too small to allocate from" in real.refused:
            kinds["too small"] += 1
        else:
            wrong.append(f"{written}: host-local refused the masked subnet {net}: {real.refused}")
        if model != real.address:
            wrong.append(f"{written}: _first_pod says {model}, host-local {real.address or real.refused}")
        if written != str(net):
            kinds["host bits set"] += 1
            # range.go checks the size first, then the host bits
            why = "too small to allocate from" if real.address is None else "Network has host bits set"
            as_written = allocate(host_local, written, tmp_path / f"w{i:04d}")
            if as_written.address is not None or why not in as_written.refused:
                wrong.append(f"{written}: host-local, given it as written, did not refuse it as {why!r}: {as_written}")
    print(f"\nhost-local differential: {len(subnets)} pod subnets, {kinds}, {len(wrong)} disagreements")
    assert not wrong, "\n".join(wrong[:20])
    assert len(subnets) == CASES
    if CASES >= len(LANDMARKS):  # the landmarks alone hold every kind
        assert all(kinds.values()), kinds
