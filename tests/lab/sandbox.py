"""The whole outage, kept running for a person to try keybuzz-fix on: what `tests/sandbox up` builds.

The world is tests/lab/outage.py's, with the masters as lab hosts too: the control plane seeded with
the outage (tests/cluster/seed.py), five workers and three masters with real sshd and UFW (default
deny incoming, as in production), the workers' data path (kube-proxy, the apps' processes, the
ingress stand-in) and the nginx load balancer at 198.18.0.40 answering 504. For a sandbox, also:

- every node gets a private copy-on-write /etc (tests/lab/flannel.py ``private_etc``), so nothing
  the tool writes there over SSH reaches this machine's /etc;
- each master serves the API server on its own address, port 6443 (socat to the data path's API
  forwarder, allowed by UFW from the private network as on a K3s server, the masters' addresses in
  the serving certificate) and holds /etc/rancher/k3s/k3s.yaml: ``--kubeconfig-from-master`` works;
- with ``overlay_broken``, flannel.1 on all eight nodes as flanneld builds it (tests/lab/flannel.py),
  and UFW dropping its 8472/udp: the real cause, for ``diagnose`` and ``overlay``.

It writes the operator's files into ``folder`` (servers.tsv, kubeconfig, id_ed25519, known_hosts,
lab.yaml, lb-ca.pem, env, and the commands to run), and its own under ``folder/run``.

    with Sandbox(folder, bin_dir).start() as box:
        print(box.commands())
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from kubernetes import client, config

from tests.cluster.controlplane import SERVICE_CLUSTER_IP_RANGE, ControlPlane
from tests.cluster.seed import DEFAULT_MASTERS, DEFAULT_WORKERS, seed_keybuzz
from tests.lab.flannel import POD_NETWORK, Vtep, ping, private_etc, vtep_script
from tests.lab.hosts import SUBNET, LabError, LabHost
from tests.lab.nginx import accepts
from tests.lab.outage import OutageLab

REPO = Path(__file__).resolve().parents[2]
API_PORT = 6443
K3S_YAML = "/etc/rancher/k3s/k3s.yaml"
CONFIG = f"""\
# keybuzz-fix's configuration for the sandbox: the lab's networks instead of production's
# (private network 10.0.0.0/16, pods 10.42.0.0/16, Services 10.43.0.0/16).
firewall:
  source: {SUBNET}
overlay:
  source: {SUBNET}
  pod_cidr: {POD_NETWORK}
  service_cidr: {SERVICE_CLUSTER_IP_RANGE}
"""


class Sandbox:
    """The control plane, the lab hosts and the load balancer of the outage, and the operator's files.

    Args:
        folder: an existing folder, for the operator's files; ``folder/run`` gets the control plane's
            files and the hosts' data-path files.
        bin_dir: the control plane's binaries (tests/cluster/build).
        overlay_broken: also build the VXLAN overlay that UFW breaks.
        say: where progress lines go.
    """

    def __init__(
        self, folder: Path, bin_dir: Path, *, overlay_broken: bool = False, say: Callable[[str], None] = print
    ) -> None:
        self.folder = folder
        self.run_dir = folder / "run"
        self.overlay_broken = overlay_broken
        self.say = say
        self.cp = ControlPlane(
            bin_dir, workdir=self.run_dir / "cluster", serving_addresses=[ip for _, ip in DEFAULT_MASTERS]
        )
        self.world: OutageLab | None = None
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Sandbox:
        """Start and seed the control plane, build the hosts, check the outage, write the files."""
        started = time.monotonic()
        try:
            self.cp.start()
            api = config.new_client_from_config(config_file=str(self.cp.kubeconfig))
            try:
                seed_keybuzz(api)
                self.say(
                    f"control plane {self.cp.version} seeded with the outage "
                    f"({len(DEFAULT_WORKERS)} workers, {len(DEFAULT_MASTERS)} masters) "
                    f"in {time.monotonic() - started:.0f} s"
                )
                lap = time.monotonic()
                self.world = OutageLab(self.cp, self.run_dir / "world", master_hosts=True).start()
                self.say(
                    f"lab hosts up (sshd, UFW default deny), data path and load balancer "
                    f"in {time.monotonic() - lap:.0f} s"
                )
                for host in self.nodes:
                    private_etc(host)
                self._serve_api_on_masters()
                if self.overlay_broken:
                    self._break_overlay(api)
            finally:
                api.close()
            self._check_outage()
            self._write_files()
        except BaseException:
            self.close()
            raise
        self.say(f"ready in {time.monotonic() - started:.0f} s")
        return self

    def close(self) -> None:
        """Stop the load balancer, the hosts and the control plane; idempotent."""
        if self._closed:
            return
        self._closed = True
        started = time.monotonic()
        if self.world is not None:
            self.world.close()
        lap = time.monotonic()
        self.cp.stop()
        self.say(f"stopped the hosts in {lap - started:.1f} s, the control plane in {time.monotonic() - lap:.1f} s")

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def nodes(self) -> list[LabHost]:
        """The K3s nodes' hosts: workers, then masters."""
        assert self.world is not None and self.world.lab is not None and self.world.masters_lab is not None
        return [*self.world.lab.hosts, *self.world.masters_lab.hosts]

    # -- the parts a sandbox adds -------------------------------------------------------------------

    def _serve_api_on_masters(self) -> None:
        """Each master: UFW allows 6443/tcp, socat serves the API there, k3s.yaml in /etc/rancher/k3s."""
        assert self.world is not None and self.world.masters_lab is not None
        assert self.world.data_path is not None and self.world.data_path.api_address
        already = Path(K3S_YAML).exists()  # this machine may run K3s itself
        source = self.run_dir / "k3s.yaml"
        _write_private(source, self._k3s_yaml())
        masters = self.world.masters_lab.hosts
        for host in masters:
            host.run(f"ufw allow from {SUBNET} to any port {API_PORT} proto tcp comment 'k3s: API server'")
            host.run(f"install -D -m 600 {shlex.quote(str(source))} {K3S_YAML}")  # into the host's own /etc
            host.spawn(
                "k3s-api",
                [
                    "socat",
                    f"TCP-LISTEN:{API_PORT},bind={host.ip},reuseaddr,fork",
                    f"TCP:{self.world.data_path.api_address}",
                ],
                host.workdir / "k3s-api.log",
            )
        deadline = time.monotonic() + 10
        for host in masters:
            while not accepts(host.ip, API_PORT):
                if time.monotonic() > deadline:
                    raise LabError(f"{host.name}: nothing answers on {host.ip}:{API_PORT}")
                time.sleep(0.05)
        if not already and Path(K3S_YAML).exists():
            raise LabError(f"{K3S_YAML} appeared on this machine: the masters' /etc is not private")

    def _k3s_yaml(self) -> str:
        """The admin kubeconfig as K3s writes it on a server: cluster, user and context "default", 127.0.0.1:6443."""
        doc = yaml.safe_load(self.cp.kubeconfig.read_text())
        return yaml.safe_dump(
            {
                "apiVersion": "v1",
                "clusters": [
                    {
                        "cluster": {
                            "certificate-authority-data": doc["clusters"][0]["cluster"]["certificate-authority-data"],
                            "server": f"https://127.0.0.1:{API_PORT}",
                        },
                        "name": "default",
                    }
                ],
                "contexts": [{"context": {"cluster": "default", "user": "default"}, "name": "default"}],
                "current-context": "default",
                "kind": "Config",
                "preferences": {},
                "users": [{"name": "default", "user": doc["users"][0]["user"]}],
            },
            sort_keys=False,
        )

    def _break_overlay(self, api: client.ApiClient) -> None:
        """flannel.1 on every node from its Node's podCIDR; UFW's default deny drops the VXLAN packets."""
        cidrs = {n.metadata.name: n.spec.pod_cidr for n in client.CoreV1Api(api).list_node().items}
        vteps = {h.name: Vtep(h.name, h.ip, cidrs[h.name]) for h in self.nodes}
        for host in self.nodes:
            host.run(vtep_script(vteps[host.name], [v for name, v in vteps.items() if name != host.name]))
        first, other = self.nodes[0], self.nodes[-1]
        if ping(first, vteps[other.name].address, count=1):
            raise LabError(f"{first.name} reaches {other.name} over flannel.1: UFW should drop 8472/udp")
        self.say(f"overlay: flannel.1 on {len(vteps)} nodes, UFW drops 8472/udp between them")

    def _check_outage(self) -> None:
        """Both sites answer 504 through the load balancer, as in the outage."""
        assert self.world is not None and self.world.lb is not None
        for site in ("platform.keybuzz.io", "platform-api.keybuzz.io"):
            answers = self.world.requests(site, count=2, timeout=8)
            if {a.status for a in answers} != {504}:
                raise LabError(f"https://{site} through the load balancer should answer 504: {answers}")
        self.say(f"load balancer {self.world.lb.ip}: both sites answer 504")

    # -- the operator's files ---------------------------------------------------------------------

    def _write_files(self) -> None:
        assert self.world is not None and self.world.lab is not None and self.world.lb is not None
        assert self.world.data_path is not None
        d = self.folder
        shutil.copyfile(self.world.servers, d / "servers.tsv")
        _write_private(d / "kubeconfig", self.cp.kubeconfig.read_text())
        _write_private(d / "id_ed25519", self.world.lab.identity_file.read_text())
        shutil.copyfile(self.world.lab.identity_file.with_suffix(".pub"), d / "id_ed25519.pub")
        shutil.copyfile(self.world.known_hosts, d / "known_hosts")
        shutil.copyfile(self.world.lb.ca_file, d / "lb-ca.pem")
        (d / "lab.yaml").write_text(CONFIG)
        (d / "state").mkdir(mode=0o700, exist_ok=True)
        venv = REPO / ".venv" / "bin"
        (d / "env").write_text(
            "# keybuzz-fix sandbox (tests/sandbox up): `. ./env` in this folder\n"
            f"export KUBECONFIG={d / 'kubeconfig'}\n"
            f"export KEYBUZZ_FIX_STATE_DIR={d / 'state'}  # backups and audit log stay in the sandbox\n"
            f"export KEYBUZZ_FIX_SANDBOX_DIR={d}  # for tests/sandbox status and down\n"
            f'case ":$PATH:" in *":{venv}:"*) ;; *) export PATH="{venv}:$PATH" ;; esac  # keybuzz-fix of this tree\n'
        )
        (d / "commands").write_text(self.commands())
        info = {
            "version": self.cp.version,
            "server": self.cp.server,
            "overlay_broken": self.overlay_broken,
            "load_balancer": self.world.lb.ip,
            "api_forwarder": self.world.data_path.api_address,
            "hosts": [{"name": h.name, "ip": h.ip, "netns": h.netns} for h in [*self.nodes, self.world.lb.host]],
        }
        (self.run_dir / "info.json").write_text(json.dumps(info, indent=1) + "\n")

    def commands(self) -> str:
        """The commands a newcomer runs, in order, each after a comment saying what to expect."""
        assert self.world is not None and self.world.lb is not None
        http = f"{shlex.join(self.world.lb.resolve_args())} --ca-file lb-ca.pem"
        ssh = "--identity id_ed25519 --known-hosts known_hosts"
        tsv = "servers.tsv --config lab.yaml"
        validate = f"keybuzz-fix validate {tsv} {ssh} {http}"  # check 8 looks from the workers, over SSH
        diagnose = f"keybuzz-fix diagnose {tsv} {ssh}"
        remediate = f"keybuzz-fix all {tsv} {ssh} {http}"
        steps = [
            ("The outage: both sites answer 504 through the load balancer, the score is low (exit 1).", validate),
            (
                "The real cause, read-only: UFW, Flannel and the overlay on all eight nodes over SSH"
                + (
                    " (UFW drops VXLAN)."
                    if self.overlay_broken
                    else " (no overlay in this sandbox: `up --overlay-broken` builds one)."
                ),
                diagnose,
            ),
        ]
        if self.overlay_broken:
            steps += [
                ("Let VXLAN through UFW on every node: the plan only.", f"keybuzz-fix overlay {tsv} {ssh} --dry-run"),
                ("The same, applied: shows the plan, asks once.", f"keybuzz-fix overlay {tsv} {ssh}"),
                (
                    "VXLAN gets through UFW now; diagnose still names what this lab lacks (no flanneld, so no "
                    "FORWARD accepts for the pod network).",
                    diagnose,
                ),
            ]
        steps += [
            ("The whole remediation, planned only: nothing changes.", f"{remediate} --dry-run"),
            ("The whole remediation: shows the plan, asks once, then ufw, convert, ingress and validate.", remediate),
            ("The site is back: both sites answer 200, the score is 100 % (exit 0).", validate),
            (
                "Undo convert from its backup (asks once): the Deployments and HPAs are back.",
                "keybuzz-fix rollback --latest",
            ),
        ]
        lines = [
            f"# keybuzz-fix sandbox in {self.folder}: {len(DEFAULT_WORKERS)} workers and {len(DEFAULT_MASTERS)} "
            f"masters (sshd, UFW), the load balancer {self.world.lb.ip}, the control plane.",
            "# Run these one at a time in one shell, as root:",
            f"cd {shlex.quote(str(self.folder))} && . ./env",
        ]
        for number, (what, command) in enumerate(steps, 1):
            lines += [f"# {number}. {what}", command]
        first_master = DEFAULT_MASTERS[0][0]
        lines += [
            f"# Any cluster command can read the kubeconfig from {first_master} over SSH instead, as on the "
            "real cluster:",
            f"{validate} --kubeconfig-from-master servers.tsv",
            "# When done: stop it and remove every namespace, process and file it made.",
            f"cd {shlex.quote(str(REPO))} && tests/sandbox down",
        ]
        return "\n".join(lines) + "\n"


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
