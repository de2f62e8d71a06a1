"""Real test hosts on this machine: one network namespace per host, each with its own sshd and ufw.

A host is a network namespace hanging off a bridge in the root namespace (198.18.0.1/24), plus a
private mount (and UTS) namespace held open by a small anchor process. Per-host copies of
/etc/ufw, /lib/ufw, /etc/default/ufw, /etc/hosts and /run are bind-mounted there, so sshd, the
SSH sessions it spawns and `LabHost.run` all see that host's files, and ufw run inside a host
changes only that host's netfilter tables. Nothing touches the root namespace's firewall.

Everything a run creates is named ``kbl-<token>...`` and recorded in /run/kbf-lab/<token>.json
with the owner's pid, so a later run removes what a killed run left behind, and only that.

    with Lab(["k8s-worker-01", HostSpec("no-ufw", ufw_installed=False)]) as lab:
        lab.host("k8s-worker-01").run("ufw status")
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import ipaddress
import json
import os
import re
import secrets
import select
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from keybuzz_fix.hosts.sshoptions import SshOptions

PREFIX = "kbl"
SUBNET = ipaddress.ip_network("198.18.0.0/24")
GATEWAY = "198.18.0.1"
LAB_RANGE = ipaddress.ip_network("198.18.0.0/15")
INGRESS_PORT = 31695
INGRESS_HOSTS = ("platform.keybuzz.io", "platform-api.keybuzz.io")
DEFAULT_MASTERS = ("k8s-master-01", "k8s-master-02", "k8s-master-03")
SUDO_NOPASSWD_USER = "ops"
SUDO_PASSWORD_USER = "ops-pw"
SUDO_PASSWORD = "lab-sudo-password"
# openssl passwd -6 -salt kbflabsalt0001 lab-sudo-password
_SUDO_PASSWORD_HASH = (
    "$6$kbflabsalt0001$RIEyWVRfS9HQY5Jt/ZKFXTRQP7hkeYVOh2aoiF3nEJKFvORLY4xzsVRqxhVPYFWneNNxEtVA2w36tMvkSqenK/"
)
_SUDO_UIDS = {SUDO_NOPASSWD_USER: 2901, SUDO_PASSWORD_USER: 2902}
RECORD_DIR = Path("/run/kbf-lab")
REQUIRED_TOOLS = (
    "ip",
    "nsenter",
    "unshare",
    "mount",
    "hostname",
    "sshd",
    "ssh-keygen",
    "ufw",
    "iptables",
    "iptables-save",
    "ip6tables",
    "sysctl",
)
SERVERS_TSV_COLUMNS = (
    "ENV",
    "IP_PUBLIQUE",
    "HOSTNAME",
    "IP_PRIVEE",
    "FQDN",
    "USER_SSH",
    "POOL",
    "ROLE",
    "SUBROLE",
    "DOCKER_STACK",
    "CORE",
    "NOTES",
)
NON_K3S_ROWS: tuple[Mapping[str, str], ...] = (
    {"HOSTNAME": "db-postgres-01", "IP_PRIVEE": "198.18.0.201", "ROLE": "db", "SUBROLE": "postgres"},
    {"HOSTNAME": "redis-01", "IP_PRIVEE": "198.18.0.202", "ROLE": "redis", "SUBROLE": "master"},
    {"HOSTNAME": "haproxy-01", "IP_PRIVEE": "198.18.0.203", "ROLE": "lb", "SUBROLE": "haproxy"},
)
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_HOST_ENV = {"PATH": HOST_PATH, "HOME": "/root", "LANG": "C.UTF-8", "USER": "root", "LOGNAME": "root"}
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
_OWNED_NETNS = re.compile(rf"^{PREFIX}-([0-9a-f]{{6}})-")
_OWNED_LINK = re.compile(rf"^{PREFIX}-?([0-9a-f]{{6}})(h\d+)?$")
_STUB = Path(__file__).with_name("http_stub.py")


class LabError(RuntimeError):
    """The lab could not be built, used or torn down as asked."""


class LabCommandError(subprocess.CalledProcessError):
    """A command run inside a lab host exited non-zero."""

    def __init__(self, host: str, result: subprocess.CompletedProcess[str]) -> None:
        super().__init__(result.returncode, result.args, result.stdout, result.stderr)
        self.host = host

    def __str__(self) -> str:
        return (
            f"{self.host}: command {self.cmd[-1]!r} exited {self.returncode}\n"
            f"stdout: {self.stdout.strip()}\nstderr: {self.stderr.strip()}"
        )


@dataclass(frozen=True)
class HostSpec:
    """How one lab host is set up."""

    name: str
    ufw_installed: bool = True  # False: no ufw binary inside the host
    ufw_active: bool = True  # default deny incoming + 22/tcp allowed, then enabled; False: pristine, inactive
    http_listener: bool = True  # the ingress stand-in on INGRESS_PORT
    sudo_users: bool = False  # adds SUDO_NOPASSWD_USER and SUDO_PASSWORD_USER, both with the lab key


class _Procs:
    """The processes that make one host, for starting and stopping them."""

    def __init__(self, netns: str, veth: str, hostdir: Path) -> None:
        self.netns = netns
        self.veth = veth  # the root namespace's end of the host's link to the bridge
        self.dir = hostdir
        self.anchor: subprocess.Popen[bytes] | None = None
        self.sshd: subprocess.Popen[bytes] | None = None
        self.listeners: dict[int, subprocess.Popen[bytes]] = {}
        self.daemons: dict[str, subprocess.Popen[bytes]] = {}  # other long-running processes, by name
        self.lock = threading.Lock()

    def nsenter(self, argv: Sequence[str]) -> list[str]:
        if self.anchor is None or self.anchor.poll() is not None:
            raise LabError(f"{self.netns}: the host's namespaces are gone (anchor process not running)")
        return ["nsenter", f"--target={self.anchor.pid}", "--mount", "--net", "--uts", "--", *argv]

    def stop_all(self) -> None:
        with self.lock:
            procs = [*self.daemons.values(), *self.listeners.values(), self.sshd, self.anchor]
            self.daemons.clear()
            self.listeners.clear()
            self.sshd = None
        for proc in procs:
            _stop(proc)


@dataclass(frozen=True)
class LabHost:
    """One running lab host; `run` asserts its state from inside, not over SSH."""

    name: str
    ip: str
    netns: str
    ssh_port: int
    host_key_pub: str  # "ssh-ed25519 AAAA..."
    spec: HostSpec
    workdir: Path  # this host's files and logs (sshd.log, http-PORT.log, etc-ufw/, ...)
    _procs: _Procs = field(repr=False, compare=False)

    def run(self, cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a shell command inside this host (its network, mount and UTS namespaces) as root."""
        result = subprocess.run(
            self._procs.nsenter(["sh", "-c", cmd]),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_HOST_ENV,
            cwd="/",
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if check and result.returncode != 0:
            raise LabCommandError(self.name, result)
        return result

    def popen(self, argv: Sequence[str], log: str) -> subprocess.Popen[str]:
        """Start a long-lived helper inside this host: text pipes on stdin/stdout, stderr to ``log`` in its workdir.

        The host's teardown kills it with everything else left in its namespace.
        """
        with open(self.workdir / log, "ab") as err:
            return subprocess.Popen(
                self._procs.nsenter(list(argv)),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                bufsize=1,
                env=_HOST_ENV,
                cwd="/",
                start_new_session=True,
            )

    def listen(
        self, port: int, vhosts: Iterable[str] | None = None, timeout: float = 10, label: str | None = None
    ) -> None:
        """Start an HTTP listener on 0.0.0.0:port inside this host (200 for vhosts, or for any Host).

        Its answers carry ``label`` (default: the host's name), so a test sees who answered.
        """
        _start_listener(self.name, self._procs, port, tuple(vhosts or ()), timeout, label or self.name)

    def listeners(self) -> set[int]:
        """Return the ports of the lab listeners running in this host."""
        with self._procs.lock:
            return set(self._procs.listeners)

    def spawn(self, name: str, argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        """Start a long-running process inside this host (stopped with the host or `kill`), output to ``log``."""
        with self._procs.lock:
            if name in self._procs.daemons and self._procs.daemons[name].poll() is None:
                raise LabError(f"{self.name}: {name} already runs")
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                self._procs.nsenter(list(argv)),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_HOST_ENV,
                cwd="/",
                start_new_session=True,
            )
        with self._procs.lock:
            self._procs.daemons[name] = proc
        return proc

    def kill(self, name: str) -> None:
        """Stop a process started by `spawn`; nothing if it is not running."""
        with self._procs.lock:
            proc = self._procs.daemons.pop(name, None)
        _stop(proc)

    def stop_listener(self, port: int) -> None:
        """Stop a listener started on this port."""
        with self._procs.lock:
            proc = self._procs.listeners.pop(port, None)
        if proc is None:
            raise LabError(f"{self.name}: no lab listener on port {port}")
        _stop(proc)


class Lab:
    """Context manager building N hosts on a bridge; `close` tears all of it down.

    Args:
        names: host names (default `HostSpec`) or specs; host i gets 198.18.0.(base_ip + i).
        workdir: where to keep the lab's files (kept after close); default a temp dir, deleted.
        base_ip: last octet of the first host's address.
        user: the SSH user `servers_tsv` writes (root; the sudo users exist with `sudo_users`).
        ready_timeout: seconds each host's anchor, sshd and listener get to come up.
        workers: hosts built in parallel (default: twice the CPU count).
    """

    def __init__(
        self,
        names: Sequence[str | HostSpec],
        *,
        workdir: Path | None = None,
        base_ip: int = 11,
        user: str = "root",
        ready_timeout: float = 30.0,
        workers: int | None = None,
    ) -> None:
        self.specs = [s if isinstance(s, HostSpec) else HostSpec(s) for s in names]
        self.user = user
        self.hosts: list[LabHost] = []
        self.ready_timeout = ready_timeout
        self._check_specs(base_ip)
        self._closed = False
        self._close_lock = threading.Lock()
        self._netns: dict[str, _Procs | None] = {}
        self._net: _Network | None = None
        self._ips: list[str] = []
        self.token = secrets.token_hex(3)
        self._owns_dir = workdir is None
        if workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-{self.token}-"))
        else:
            if any(c in str(workdir) for c in ",: \n"):  # the paths end up in mount options
                raise LabError(f"lab directory {workdir} must not contain ',', ':' or whitespace")
            self.workdir = Path(workdir) / f"{PREFIX}-{self.token}"
            self.workdir.mkdir(parents=True)
        _write_record(self.token, self.workdir if self._owns_dir else None)
        _OPEN_LABS[self] = None
        try:
            self._build(base_ip, workers or min(len(self.specs), 2 * (os.cpu_count() or 2)))
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def host(self, name: str) -> LabHost:
        """Return the lab host with this name."""
        for h in self.hosts:
            if h.name == name:
                return h
        raise LabError(f"no lab host named {name!r} (hosts: {', '.join(h.name for h in self.hosts)})")

    def tcp_reachable(self, ip: str, port: int, timeout: float = 1.0) -> bool:
        """Whether a TCP connect from the root namespace to ip:port succeeds."""
        if ipaddress.ip_address(ip) not in LAB_RANGE:
            raise ValueError(f"{ip} is outside the lab range {LAB_RANGE}")
        try:
            with socket.create_connection((ip, port), timeout=timeout):
                return True
        except OSError:
            return False

    def servers_tsv(
        self,
        path: Path,
        masters: Sequence[str] = DEFAULT_MASTERS,
        extra_rows: Iterable[Mapping[str, str]] = (),
        env: str = "prod",
    ) -> Path:
        """Write a servers.tsv listing the lab hosts as K3s workers, plus masters and extra rows (`servers_tsv`)."""
        return servers_tsv(path, self.hosts, user=self.user, masters=masters, extra_rows=extra_rows, env=env)

    def stop_host(self, name: str) -> None:
        """Kill that host's sshd (the host looks down over SSH); its firewall and files stay."""
        procs = self.host(name)._procs
        with procs.lock:
            proc, procs.sshd = procs.sshd, None
        _stop(proc)

    def start_host(self, name: str) -> None:
        """Start that host's sshd again (after `stop_host`) and wait until it accepts connections."""
        h = self.host(name)
        with h._procs.lock:
            running = h._procs.sshd is not None and h._procs.sshd.poll() is None
        if not running:
            self._start_sshd(h.name, h.ip, h._procs)

    def regenerate_host_key(self, name: str) -> LabHost:
        """Give that host a new host key and restart its sshd; known_hosts keeps the old key."""
        h = self.host(name)
        self.stop_host(name)
        key = h.workdir / "ssh_host_ed25519_key"
        key.unlink()
        key.with_suffix(".pub").unlink()
        new = replace(h, host_key_pub=_host_key(key, name))
        self.hosts[self.hosts.index(h)] = new
        self.start_host(name)
        return new

    def log_tails(self, lines: int = 40) -> dict[str, str]:
        """Return the last lines of every component log, keyed "host/file.log", for failure reports."""
        tails = {}
        for log in sorted([*self.workdir.glob("*/*.log"), *self.workdir.glob("*/*/*.log")]):
            with contextlib.suppress(OSError):
                text = log.read_text(errors="replace").splitlines()[-lines:]
                if text:
                    tails[str(log.relative_to(self.workdir))] = "\n".join(text)
        return tails

    def close(self) -> None:
        """Kill every process of the lab, delete its namespaces, bridge share and files; idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        errors: list[str] = []
        with ThreadPoolExecutor(max_workers=max(1, min(len(self._netns), 16))) as pool:
            for err in pool.map(_teardown_netns, list(self._netns.items())):
                if err:
                    errors.append(err)
        if self._net is not None:
            self._net.release(self._ips)
            _release_network(self._net)
            self._net = None
        if self._owns_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        (RECORD_DIR / f"{self.token}.json").unlink(missing_ok=True)
        _OPEN_LABS.pop(self, None)
        if errors:
            raise LabError("lab teardown incomplete: " + "; ".join(errors))

    @property
    def identity_file(self) -> Path:
        """The private key (ed25519, no passphrase) authorized for every user on every host."""
        return self.workdir / "id_ed25519"

    @property
    def known_hosts_file(self) -> Path:
        """known_hosts with each host's key for its IP, as the hosts were built."""
        return self.workdir / "known_hosts"

    def ssh_options(self, **overrides: float) -> SshOptions:
        """The tool's SSH options for these hosts: the lab's key and known_hosts, no ssh_config, short timeouts."""
        timeouts = {"connect_timeout": 5.0, "command_timeout": 30.0, **overrides}
        return SshOptions(known_hosts=self.known_hosts_file, identity=self.identity_file, ssh_config=None, **timeouts)

    # -- building ---------------------------------------------------------------------------

    def _check_specs(self, base_ip: int) -> None:
        names = [s.name for s in self.specs]
        if not names:
            raise LabError("a lab needs at least one host")
        bad = [n for n in names if not _NAME.match(n)]
        if bad:
            raise LabError(f"host names must be short lowercase DNS labels: {bad}")
        if len(set(names)) != len(names):
            raise LabError(f"duplicate host names in {names}")
        if base_ip < 2 or base_ip + len(names) - 1 > 254:
            raise LabError(f"hosts 198.18.0.{base_ip}.. do not fit in {SUBNET} (2..254)")
        if any(s.sudo_users for s in self.specs) and not shutil.which("sudo", path=HOST_PATH):
            raise LabError("HostSpec(sudo_users=True) needs sudo on this machine: apt-get install sudo")

    def _build(self, base_ip: int, workers: int) -> None:
        self._net = _acquire_network()
        self._bridge = self._net.bridge
        ips = [str(SUBNET.network_address + base_ip + i) for i in range(len(self.specs))]
        self._net.claim(ips, self.token)
        self._ips = ips
        self.workdir.chmod(0o755)  # users other than root read authorized_keys and their home here
        _check(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"lab-{self.token}", "-f", str(self.identity_file)]
        )
        authorized = self.workdir / "authorized_keys"
        shutil.copyfile(self.identity_file.with_suffix(".pub"), authorized)
        authorized.chmod(0o644)
        with ThreadPoolExecutor(max_workers=workers + 1) as pool:
            template: Future[Path] | None = None
            if any(s.ufw_installed and s.ufw_active for s in self.specs):
                template = pool.submit(self._ufw_template)
            prepared = list(pool.map(self._prepare_host, range(len(self.specs)), self.specs, ips))
            self.hosts = list(pool.map(lambda p: self._boot_host(*p, template), prepared))
        self.known_hosts_file.write_text("".join(f"{h.ip} {h.host_key_pub}\n" for h in self.hosts))

    def _ufw_template(self) -> Path:
        """Run the real ufw commands once (deny incoming, allow 22/tcp, enable) in a scratch netns."""
        d = self.workdir / "ufw-template"
        _copy_ufw_files(d)
        netns = f"{PREFIX}-{self.token}-ufw-template"
        self._netns[netns] = None
        _check(["ip", "netns", "add", netns])
        script = _binds(_ufw_binds(d)) + "ufw default deny incoming && ufw allow 22/tcp && ufw --force enable"
        _check(
            ["ip", "netns", "exec", netns, "unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            timeout=60,
            env=_HOST_ENV,
        )
        err = _teardown_netns((netns, None))
        if err:
            raise LabError(err)
        del self._netns[netns]
        return d

    def _prepare_host(self, index: int, spec: HostSpec, ip: str) -> tuple[HostSpec, str, _Procs, str]:
        """Write the host's files and create its namespace and veth; no process runs yet."""
        d = self.workdir / spec.name
        d.mkdir()
        d.chmod(0o755)
        _copy_ufw_files(d)
        (d / "hosts").write_text(Path("/etc/hosts").read_text() + f"{ip}\t{spec.name}\n")
        if not spec.ufw_installed:
            (d / "hide").mkdir()
            os.mknod(d / "hide" / "ufw", stat.S_IFCHR | 0o600, os.makedev(0, 0))  # overlayfs whiteout
        if spec.sudo_users:
            _write_sudo_users(d)
        key_pub = _host_key(d / "ssh_host_ed25519_key", spec.name)
        (d / "sshd_config").write_text(_sshd_config(ip, d, self.workdir / "authorized_keys"))
        netns = f"{PREFIX}-{self.token}-{spec.name}"
        veth = f"{PREFIX}{self.token}h{index}"
        procs = _Procs(netns, veth, d)
        self._netns[netns] = procs
        _check(["ip", "netns", "add", netns])
        _check(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns])
        _check(["ip", "link", "set", veth, "master", self._bridge, "up"])
        # The MAC is derived from the address, so a host rebuilt at an address a previous lab used
        # is reachable at once: the root namespace's neighbour cache still points at the right MAC.
        mac = "02:00:" + ":".join(f"{int(b):02x}" for b in ip.split("."))
        _check(["ip", "neigh", "flush", "to", ip])
        _check(
            ["ip", "-n", netns, "-batch", "-"],
            stdin_text=(
                f"link set eth0 address {mac}\naddr add {ip}/{SUBNET.prefixlen} dev eth0\nlink set eth0 up\n"
                f"link set lo up\nroute add default via {GATEWAY}\n"
            ),
        )
        return spec, ip, procs, key_pub

    def _boot_host(
        self, spec: HostSpec, ip: str, procs: _Procs, key_pub: str, template: Future[Path] | None
    ) -> LabHost:
        """Start the anchor (mounts), ufw, sshd and the listener of one host; wait until SSH answers."""
        d = procs.dir
        if spec.ufw_installed and spec.ufw_active:
            assert template is not None
            t = template.result(timeout=120)
            # Copy in place: the files are bind-mount sources, their inodes must stay the same.
            shutil.copytree(t / "etc-ufw", d / "etc-ufw", dirs_exist_ok=True)
            shutil.copyfile(t / "default-ufw", d / "default-ufw")
        binds = [*_ufw_binds(d), (d / "hosts", "/etc/hosts"), *_quiet_shell_binds(d)]
        if spec.sudo_users:
            binds += [(d / f, f"/etc/{f}") for f in ("passwd", "shadow", "group", "sudoers.d")]
        script = _binds(binds)
        if not spec.ufw_installed:
            script += f"mount -t overlay {PREFIX}-sbin -o lowerdir={d}/hide:/usr/sbin /usr/sbin\n"
        script += f"hostname {spec.name}\necho ready\nexec sleep infinity\n"
        with open(d / "anchor.log", "wb") as log:
            procs.anchor = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    procs.netns,
                    "unshare",
                    "--mount",
                    "--uts",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    script,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env=_HOST_ENV,
                start_new_session=True,
            )
        _wait_ready(procs.anchor, self.ready_timeout, f"{spec.name}: mount namespace", d / "anchor.log")
        host = LabHost(spec.name, ip, procs.netns, 22, key_pub, spec, d, procs)
        if spec.ufw_installed and spec.ufw_active:
            host.run("/lib/ufw/ufw-init start quiet", timeout=60)  # what ufw.service does at boot
        self._start_sshd(spec.name, ip, procs)
        if spec.http_listener:
            host.listen(INGRESS_PORT, INGRESS_HOSTS, timeout=self.ready_timeout)
        return host

    def _start_sshd(self, name: str, ip: str, procs: _Procs) -> None:
        d, log_path = procs.dir, procs.dir / "sshd.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                procs.nsenter(["/usr/sbin/sshd", "-D", "-f", str(d / "sshd_config"), "-E", str(log_path)]),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=_HOST_ENV,
                cwd="/",
                start_new_session=True,
            )
        with procs.lock:
            procs.sshd = proc
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if proc.poll() is not None:
                raise LabError(f"{name}: sshd exited with {proc.returncode}:\n{_tail(log_path)}")
            try:
                with socket.create_connection((ip, 22), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise LabError(
                        f"{name}: sshd not reachable at {ip}:22 after {self.ready_timeout}s:\n{_tail(log_path)}"
                    ) from None
                time.sleep(0.01)


def servers_tsv(
    path: Path,
    hosts: Sequence[LabHost],
    *,
    user: str = "root",
    masters: Sequence[str] = DEFAULT_MASTERS,
    extra_rows: Iterable[Mapping[str, str]] = (),
    env: str = "prod",
) -> Path:
    """Write a servers.tsv listing ``hosts`` as K3s workers, plus masters and extra rows.

    A name in ``masters`` that is one of ``hosts`` becomes a master row with its lab IP; other
    masters get unused addresses 198.18.0.2-10 (nothing answers there).
    """
    lab_ips = {h.name: h.ip for h in hosts}
    taken = _taken_ips()
    spare = (ip for ip in (str(SUBNET.network_address + n) for n in range(2, 11)) if ip not in taken)
    rows: list[Mapping[str, str]] = []
    for m in masters:
        ip = lab_ips.get(m) or next(spare, None)
        if ip is None:
            raise LabError("no spare address 198.18.0.2-10 left for the master rows")
        rows.append({"HOSTNAME": m, "IP_PRIVEE": ip, "ROLE": "k3s", "SUBROLE": "master"})
    rows += [
        {"HOSTNAME": h.name, "IP_PRIVEE": h.ip, "ROLE": "k3s", "SUBROLE": "worker"}
        for h in hosts
        if h.name not in masters
    ]
    rows += list(extra_rows)
    defaults = {"ENV": env, "USER_SSH": user, "NOTES": "lab"}
    lines = ["\t".join(SERVERS_TSV_COLUMNS)]
    for row in rows:
        unknown = set(row) - set(SERVERS_TSV_COLUMNS)
        if unknown:
            raise LabError(f"unknown servers.tsv column(s) {sorted(unknown)}")
        lines.append("\t".join(row.get(c) or defaults.get(c, "-") for c in SERVERS_TSV_COLUMNS))
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


# -- the bridge, shared by every Lab of this process ------------------------------------------


class _Network:
    """The bridge with 198.18.0.1/24 in the root namespace; the subnet exists once per machine."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(3)
        self.bridge = f"{PREFIX}-{self.token}"
        self.users = 0
        self.claimed: dict[str, str] = {}
        self.lock = threading.Lock()
        self.machine_lock: int | None = None

    def up(self) -> None:
        self._lock_machine()
        remove_leftovers()
        routes = _check(["ip", "-4", "-o", "route", "show", "root", str(LAB_RANGE)]).stdout.strip()
        if routes:
            route = routes.splitlines()[0]
            owner = ""
            if (m := re.search(r"\bdev (\S+)", route)) and (token := _token(m.group(1))):
                with contextlib.suppress(OSError, ValueError, KeyError):
                    owner = f" by pid {json.loads((RECORD_DIR / f'{token}.json').read_text())['pid']}"
            raise LabError(
                f"{LAB_RANGE} is already in use on this machine{owner} ({route}): only one lab run at a time"
            )
        _write_record(self.token, None)
        _check(["ip", "link", "add", "name", self.bridge, "type", "bridge"])
        _check(["ip", "addr", "add", f"{GATEWAY}/{SUBNET.prefixlen}", "dev", self.bridge])
        _check(["ip", "link", "set", self.bridge, "up"])

    def down(self) -> None:
        if Path("/sys/class/net", self.bridge).exists():
            _check(["ip", "link", "del", self.bridge])
        (RECORD_DIR / f"{self.token}.json").unlink(missing_ok=True)
        if self.machine_lock is not None:
            os.close(self.machine_lock)  # releases the flock
            self.machine_lock = None

    def _lock_machine(self) -> None:
        """Wait (bounded) for other test processes' labs to finish: the subnet exists once per machine."""
        RECORD_DIR.mkdir(parents=True, exist_ok=True)
        fd = os.open(RECORD_DIR / "machine.lock", os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + float(os.environ.get("KBF_LAB_WAIT", "1200"))
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise LabError(
                        f"another process holds the lab subnet for too long ({RECORD_DIR / 'machine.lock'}); giving up"
                    ) from None
                time.sleep(0.5)
        self.machine_lock = fd

    def claim(self, ips: list[str], owner: str) -> None:
        with self.lock:
            used = [ip for ip in ips if ip in self.claimed]
            if used:
                raise LabError(f"address(es) {', '.join(used)} already used by another lab of this run")
            self.claimed.update(dict.fromkeys(ips, owner))

    def release(self, ips: list[str]) -> None:
        with self.lock:
            for ip in ips:
                self.claimed.pop(ip, None)


_NET_LOCK = threading.Lock()
_NET: _Network | None = None


def _acquire_network() -> _Network:
    global _NET
    with _NET_LOCK:
        if _NET is None:
            net = _Network()
            try:
                net.up()
            except BaseException:
                net.down()
                raise
            _NET = net
        _NET.users += 1
        return _NET


def _release_network(net: _Network) -> None:
    global _NET
    with _NET_LOCK:
        net.users -= 1
        if net.users == 0:
            net.down()
            _NET = None


def _taken_ips() -> set[str]:
    with _NET_LOCK:
        net = _NET
    if net is None:
        return set()
    with net.lock:
        return set(net.claimed)


def free_base_ip(count: int, start: int = 21) -> int:
    """Return the first host offset >= start whose `count` addresses no live lab of this process uses."""
    claimed = _taken_ips()
    for base in range(start, 255 - count + 1):
        if all(str(SUBNET.network_address + base + i) not in claimed for i in range(count)):
            return base
    raise LabError(f"no {count} free consecutive addresses left in {SUBNET} from .{start}")


# -- leftovers of dead runs -------------------------------------------------------------------


def _start_time(pid: int) -> str | None:
    """The process's start time, None once it is gone; a zombie is gone (an init that never reaps keeps it)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]  # field 3, state; field 22, starttime


def _write_record(token: str, workdir: Path | None) -> None:
    RECORD_DIR.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    record = {"pid": pid, "start": _start_time(pid), "workdir": str(workdir) if workdir else None}
    (RECORD_DIR / f"{token}.json").write_text(json.dumps(record))


def _netns_names() -> list[str]:
    out = _check(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _owner_alive(record: Mapping[str, object]) -> bool:
    pid = record.get("pid")
    return isinstance(pid, int) and _start_time(pid) == record.get("start")


def _token(name: str) -> str | None:
    m = _OWNED_NETNS.match(name) or _OWNED_LINK.match(name)
    return m.group(1) if m else None


def remove_leftovers() -> list[str]:
    """Remove namespaces, links, files and records of lab runs whose owner process is dead."""
    # List what exists before reading the records: an owner writes its record before creating anything.
    netns = [n for n in _netns_names() if _OWNED_NETNS.match(n)]
    links = [
        line.split(":")[1].strip().split("@")[0] for line in _check(["ip", "-o", "link", "show"]).stdout.splitlines()
    ]
    links = [n for n in links if _OWNED_LINK.match(n)]
    records: dict[str, Mapping[str, object]] = {}
    for path in sorted(RECORD_DIR.glob("*.json")) if RECORD_DIR.is_dir() else ():
        try:
            records[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError):
            records[path.stem] = {}
    live = {token for token, record in records.items() if _owner_alive(record)}
    removed = []
    for ns in netns:
        if _token(ns) not in live:
            err = _teardown_netns((ns, None))
            removed.append(f"netns {ns}" + (f" (failed: {err})" if err else ""))
    for link in links:
        if _token(link) not in live and Path("/sys/class/net", link).exists():
            subprocess.run(["ip", "link", "del", link], capture_output=True, timeout=30, check=False)
            removed.append(f"link {link}")
    for token, record in records.items():
        if token in live:
            continue
        workdir = record.get("workdir")
        if isinstance(workdir, str) and Path(workdir).name.startswith(f"{PREFIX}-{token}"):
            shutil.rmtree(workdir, ignore_errors=True)
            removed.append(f"dir {workdir}")
        (RECORD_DIR / f"{token}.json").unlink(missing_ok=True)
    return removed


# -- small helpers ----------------------------------------------------------------------------


def _check(
    argv: list[str], timeout: float = 30, stdin_text: str | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command of the lab's machinery; a failure is a LabError with its stderr."""
    try:
        if stdin_text is None:
            result = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, env=env, check=False, stdin=subprocess.DEVNULL
            )
        else:
            result = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, env=env, check=False, input=stdin_text
            )
    except subprocess.TimeoutExpired as e:
        raise LabError(f"{shlex.join(argv)[:200]}: no answer after {timeout}s") from e
    if result.returncode != 0:
        raise LabError(
            f"{shlex.join(argv)[:200]} exited {result.returncode}: {(result.stderr or result.stdout).strip()[-2000:]}"
        )
    return result


def _stop(proc: subprocess.Popen[bytes] | None, grace: float = 3.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=grace)


def _teardown_netns(item: tuple[str, _Procs | None]) -> str | None:
    """Stop a host's processes, kill anything else left in its netns, delete the netns."""
    netns, procs = item
    try:
        if procs is not None:
            procs.stop_all()
        if not Path("/run/netns", netns).exists():
            return None
        deadline = time.monotonic() + 10
        while pids := _check(["ip", "netns", "pids", netns]).stdout.split():
            if time.monotonic() > deadline:
                return f"{netns}: processes {' '.join(pids)} survive SIGKILL"
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            time.sleep(0.02)
        if procs is not None and Path("/sys/class/net", procs.veth).exists():
            _check(["ip", "link", "del", procs.veth])  # at once; the kernel frees a netns's links later
        _check(["ip", "netns", "del", netns])
    except (LabError, OSError, subprocess.SubprocessError) as e:
        return f"{netns}: {e}"
    return None


def _copy_ufw_files(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    shutil.copytree("/etc/ufw", d / "etc-ufw", symlinks=True)
    shutil.copytree("/lib/ufw", d / "lib-ufw", symlinks=True)
    shutil.copy2("/etc/default/ufw", d / "default-ufw")
    (d / "run" / "sshd").mkdir(parents=True)
    (d / "run" / "lock").mkdir(mode=0o1777)
    (d / "run" / "lock").chmod(0o1777)


def _quiet_shell_binds(d: Path) -> list[tuple[Path, str]]:
    """Empty files over root's shell start-up files inside a host.

    The hosts share this machine's /root, and with it its shell start-up: here ``pyenv init``,
    whose rehash waits on a lock another session may hold (or a killed one left behind), so an SSH
    command to a host could wait a minute. A node's root has no such start-up. The rest of /root
    (the control plane's build cache, among others) stays visible.
    """
    empty = d / "empty-rc"
    empty.touch()
    return [(empty, str(f)) for f in (Path("/root", n) for n in _SHELL_RC) if f.is_file()]


_SHELL_RC = (".bashrc", ".profile", ".bash_profile", ".bash_login")


def _ufw_binds(d: Path) -> list[tuple[Path, str]]:
    """The per-host copies `_copy_ufw_files` made, and where they are mounted inside the host."""
    return [
        (d / "etc-ufw", "/etc/ufw"),
        (d / "lib-ufw", "/lib/ufw"),
        (d / "default-ufw", "/etc/default/ufw"),
        (d / "run", "/run"),
    ]


def _binds(pairs: list[tuple[Path, str]]) -> str:
    return "set -e\n" + "".join(f"mount --bind {shlex.quote(str(src))} {dst}\n" for src, dst in pairs)


def _host_key(path: Path, name: str) -> str:
    _check(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)])
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


def _sshd_config(ip: str, d: Path, authorized_keys: Path) -> str:
    return (
        f"ListenAddress {ip}:22\n"
        f"HostKey {d / 'ssh_host_ed25519_key'}\n"
        f"AuthorizedKeysFile {authorized_keys}\n"
        "PidFile none\n"
        "StrictModes no\n"
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        "UseDNS no\n"
        "PrintMotd no\n"
        "PrintLastLog no\n"
        "AcceptEnv LANG LC_*\n"
        "Subsystem sftp /usr/lib/openssh/sftp-server\n"
        "LogLevel VERBOSE\n"
    )


def _write_sudo_users(d: Path) -> None:
    """Per-host /etc/passwd, shadow, group and sudoers.d with the two sudo users added."""
    passwd, group, shadow = (Path("/etc", f).read_text() for f in ("passwd", "group", "shadow"))
    taken = {line.split(":")[2] for line in passwd.splitlines() if line.count(":") >= 2}
    for user, uid in _SUDO_UIDS.items():
        if str(uid) in taken:
            raise LabError(f"uid {uid} is already used in /etc/passwd; cannot add lab user {user}")
        home = d / "home" / user
        home.mkdir(parents=True)
        os.chown(home, uid, uid)
        passwd += f"{user}:x:{uid}:{uid}:lab sudo user:{home}:/bin/bash\n"
        group += f"{user}:x:{uid}:\n"
        shadow += f"{user}:{_SUDO_PASSWORD_HASH}:19000:0:99999:7:::\n"
    for name, text in (("passwd", passwd), ("group", group), ("shadow", shadow)):
        original = Path("/etc", name)
        shutil.copy2(original, d / name)  # keeps the mode (shadow: 0640)
        os.chown(d / name, original.stat().st_uid, original.stat().st_gid)
        (d / name).write_text(text)
    shutil.copytree("/etc/sudoers.d", d / "sudoers.d", symlinks=True)
    rules = d / "sudoers.d" / "lab"
    rules.write_text(f"{SUDO_NOPASSWD_USER} ALL=(ALL:ALL) NOPASSWD: ALL\n{SUDO_PASSWORD_USER} ALL=(ALL:ALL) ALL\n")
    rules.chmod(0o440)


def _wait_ready(proc: subprocess.Popen[bytes], timeout: float, what: str, log: Path) -> None:
    """Wait for the line "ready" on the process's stdout, then close our end of the pipe."""
    assert proc.stdout is not None
    fd, buf = proc.stdout.fileno(), b""
    deadline = time.monotonic() + timeout
    try:
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise LabError(f"{what}: not ready after {timeout}s:\n{_tail(log)}")
            chunk = os.read(fd, 256)
            if not chunk:
                proc.wait(timeout=5)
                raise LabError(f"{what}: exited with {proc.returncode} before ready:\n{_tail(log)}")
            buf += chunk
    finally:
        proc.stdout.close()
    if not buf.startswith(b"ready"):
        raise LabError(f"{what}: unexpected output {buf[:200]!r}")


def _start_listener(name: str, procs: _Procs, port: int, vhosts: tuple[str, ...], timeout: float, label: str) -> None:
    with procs.lock:
        if port in procs.listeners:
            raise LabError(f"{name}: a lab listener already runs on port {port}")
    log_path = procs.dir / f"http-{port}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            procs.nsenter([sys.executable, "-I", str(_STUB), str(port), label, *vhosts]),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            env=_HOST_ENV,
            cwd="/",
            start_new_session=True,
        )
    try:
        _wait_ready(proc, timeout, f"{name}: listener on port {port}", log_path)
    except LabError:
        _stop(proc)
        raise
    with procs.lock:
        procs.listeners[port] = proc


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} unreadable)"


def missing_tools() -> list[str]:
    """Return the programs the lab needs that this machine lacks."""
    return [t for t in REQUIRED_TOOLS if not shutil.which(t, path=HOST_PATH)]


_OPEN_LABS: dict[Lab, None] = {}  # insertion-ordered set of labs not closed yet


def live_labs() -> list[Lab]:
    """Return the labs of this process that are not closed yet, oldest first."""
    return list(_OPEN_LABS)


@atexit.register
def _close_open_labs() -> None:
    for lab in list(_OPEN_LABS):
        with contextlib.suppress(LabError):
            lab.close()


if __name__ == "__main__":
    # python3 -m tests.lab.hosts: remove what killed lab runs left behind; live runs are kept.
    for what in remove_leftovers():
        print("removed", what)
