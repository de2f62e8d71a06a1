"""Lab hosts behind a bastion, the way an operator's private network sits behind its jump host.

    with lab_factory(["bastion", HostSpec("k8s-worker-01", sudo_users=True)]) as lab:
        with Bastion(lab, "bastion", ["k8s-worker-01"], port=2201) as far:
            far.address("k8s-worker-01")  # 198.18.1.x, reachable from the bastion only

The hosts behind it keep their sshd, ufw, users and files, but lose their link to the lab bridge:
their one link goes to a bridge inside the bastion's network namespace (198.18.1.0/24, inside the
lab range), their sshd listens there (on ``port``, allowed in their ufw), and their default route
is the bastion. This machine's route to 198.18.1.0/24 points at the bastion too, which does not
forward: a direct connection goes nowhere (and leaves nothing on the machine's own network), SSH
through the bastion (``direct-tcpip``) works.

:class:`UnixBridge` makes a TCP address inside a lab host lead to a TCP address of this machine
(two socat over a unix socket in the lab's folder): a master's 127.0.0.1:6443, or what a proxy
host reaches, can then be the test control plane's API.
"""

from __future__ import annotations

import contextlib
import ipaddress
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tests.lab.hosts import HOST_PATH, PREFIX, Lab, LabError, LabHost, _check

FAR_SUBNET = ipaddress.ip_network("198.18.1.0/24")
FAR_GATEWAY = "198.18.1.1"
_FAR_BRIDGE = "kbfar"


class Bastion:
    """Move lab hosts behind one of them; :meth:`close` puts this machine's route back (the lab removes the rest)."""

    def __init__(self, lab: Lab, bastion: str, hosts: Sequence[str], *, port: int = 22, timeout: float = 30) -> None:
        self.lab = lab
        self.bastion = lab.host(bastion)
        self.port = port
        self.addresses: dict[str, str] = {}
        self._route = False
        try:
            self._build(list(hosts), timeout)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Bastion:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def address(self, name: str) -> str:
        """The address of a host behind the bastion."""
        return self.addresses[name]

    def _build(self, hosts: list[str], timeout: float) -> None:
        b = self.bastion
        b.run(
            f"ip link add {_FAR_BRIDGE} type bridge && ip addr add {FAR_GATEWAY}/24 dev {_FAR_BRIDGE} "
            f"&& ip link set {_FAR_BRIDGE} up"
        )
        for i, name in enumerate(hosts):
            h = self.lab.host(name)
            far = str(FAR_SUBNET.network_address + int(h.ip.rsplit(".", 1)[1]))
            link = f"{PREFIX}{self.lab.token}h{100 + i}"  # a name the leftover sweep of tests/lab/hosts.py knows
            _check(["ip", "link", "add", link, "type", "veth", "peer", "name", "eth1", "netns", h.netns])
            _check(["ip", "link", "set", link, "netns", b.netns])
            _check(["ip", "-n", b.netns, "link", "set", link, "master", _FAR_BRIDGE, "up"])
            _check(
                ["ip", "-n", h.netns, "-batch", "-"],
                stdin_text=(
                    f"addr flush dev eth0\nlink set eth0 down\naddr add {far}/24 dev eth1\nlink set eth1 up\n"
                    f"route add default via {FAR_GATEWAY}\n"
                ),
            )
            if self.port != 22:
                h.run(f"ufw allow {self.port}/tcp", check=False)  # as the host's admin did for its sshd
            self.lab.stop_host(name)
            config = h.workdir / "sshd_config_far"
            text = (h.workdir / "sshd_config").read_text()
            config.write_text(text.replace(f"ListenAddress {h.ip}:22", f"ListenAddress {far}:{self.port}"))
            h.spawn(
                "sshd-far",
                ["/usr/sbin/sshd", "-D", "-f", str(config), "-E", str(h.workdir / "sshd.log")],
                h.workdir / "sshd-far.out",
            )
            self.addresses[name] = far
        for name, far in self.addresses.items():
            wait = (
                f"for i in $(seq {int(timeout * 20)}); do (exec 3<>/dev/tcp/{far}/{self.port}) 2>/dev/null && exit 0; "
                "sleep 0.05; done; exit 1"
            )
            if b.run(f"bash -c {shlex.quote(wait)}", check=False, timeout=timeout + 10).returncode != 0:
                raise LabError(f"{name}: sshd not reachable at {far}:{self.port} from {b.name}")
        bridge = getattr(self.lab, "_bridge", None)
        if bridge is None:
            raise LabError("the lab has no bridge")
        _check(["ip", "route", "add", str(FAR_SUBNET), "via", b.ip, "dev", bridge])
        self._route = True

    def close(self) -> None:
        """Remove this machine's route to the far side (it also goes with the lab's bridge)."""
        if self._route:
            subprocess.run(["ip", "route", "del", str(FAR_SUBNET)], capture_output=True, timeout=30, check=False)
            self._route = False


class UnixBridge:
    """``listen`` (host:port) inside a lab host leads to ``target`` (host:port) on this machine."""

    def __init__(self, host: LabHost, listen: str, target: str, name: str) -> None:
        self.host, self.name = host, name
        self.socket = host.workdir / f"{name}.sock"
        self.socket.unlink(missing_ok=True)
        log = host.workdir / f"{name}.log"
        with open(log, "ab") as out:
            self._outside = subprocess.Popen(
                ["socat", f"UNIX-LISTEN:{self.socket},fork,mode=600", f"TCP:{target}"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={"PATH": HOST_PATH},
                start_new_session=True,
            )
        addr, _, port = listen.rpartition(":")
        host.spawn(name, ["socat", f"TCP-LISTEN:{port},bind={addr},fork,reuseaddr", f"UNIX-CONNECT:{self.socket}"], log)
        _wait_listening(host, addr, int(port))

    def close(self) -> None:
        """Stop both ends."""
        self.host.kill(self.name)
        if self._outside.poll() is None:
            self._outside.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._outside.wait(timeout=5)
            if self._outside.poll() is None:
                self._outside.kill()
        self.socket.unlink(missing_ok=True)


def _wait_listening(host: LabHost, addr: str, port: int, timeout: float = 15) -> None:
    wait = (
        f"for i in $(seq {int(timeout * 20)}); do (exec 3<>/dev/tcp/{addr}/{port}) 2>/dev/null && exit 0; "
        "sleep 0.05; done; exit 1"
    )
    if host.run(f"bash -c {shlex.quote(wait)}", check=False, timeout=timeout + 10).returncode != 0:
        raise LabError(f"{host.name}: nothing listens on {addr}:{port}")


def write_into(host: LabHost, path: str, text: str) -> None:
    """Write a file inside a host's own files (e.g. under its private /etc)."""
    staged = host.workdir / ("staged-" + Path(path).name)
    staged.write_text(text)
    host.run(f"mkdir -p {shlex.quote(str(Path(path).parent))} && cp {shlex.quote(str(staged))} {shlex.quote(path)}")
