"""The UFW fan-out on K lab hosts: keybuzz-fix, a sequential ssh loop and Ansible, interleaved.

Every tool adds the same two rules (the ingress-nginx NodePorts from the private network, as the
shipped defaults say) and leaves the hosts in the same state. Each round runs, for every tool in
a rotating order: reset the rules inside the hosts (unmeasured), a cold run (rules absent), then
a no-op run (rules present). The reset checks that the previous run really added both rules.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks.timing import CommandFailed, Sample, measure
from keybuzz_fix import config
from keybuzz_fix.flows.firewall import configured_rules
from keybuzz_fix.hosts.ufw.rules import UfwRule
from tests.lab.hosts import HostSpec, Lab

TOOLS = ("keybuzz-fix", "ssh loop", "ansible")
MODES = ("cold", "no-op")


def wanted_rules() -> list[UfwRule]:
    """Return the rules `keybuzz-fix ufw` adds with the shipped defaults and no cluster to read (the lab has none)."""
    return configured_rules(config.load_config(), "no kubeconfig").ufw_rules


def keybuzz_fix_argv() -> list[str]:
    """Return how to start the installed CLI with this interpreter (its console script if present)."""
    script = Path(sys.executable).with_name("keybuzz-fix")
    return [str(script)] if script.exists() else [sys.executable, "-m", "keybuzz_fix"]


@dataclass
class UfwBench:
    """One lab of K hosts and the three ways of opening the ports on it."""

    lab: Lab
    workdir: Path
    bench_python: Path | None
    rules: list[UfwRule] = field(default_factory=wanted_rules)
    kbf_host_seconds: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in MODES})

    @property
    def k(self) -> int:
        return len(self.lab.hosts)

    # -- the tools ---------------------------------------------------------------------------

    def keybuzz_fix(self, mode: str, run: int) -> Sample:
        servers = self.workdir / "servers.tsv"
        out = self.workdir / f"kbf-{mode}-{run}.json"
        argv = [
            *keybuzz_fix_argv(),
            "ufw",
            str(servers),
            "--identity",
            str(self.lab.identity_file),
            "--known-hosts",
            str(self.lab.known_hosts_file),
            "--yes",
            "-o",
            "json",
        ]
        env = {**_base_env(), "KEYBUZZ_FIX_STATE_DIR": str(self.workdir / "kbf-state")}
        sample = measure(argv, env=env, output=out, peaks=True)
        data = json.loads(out.read_text())
        want = "changed" if mode == "cold" else "unchanged"
        statuses = {h["hostname"]: h["status"] for h in data["hosts"]}
        wrong = {h: s for h, s in statuses.items() if s != want}
        if len(statuses) != self.k or wrong:
            raise CommandFailed(f"keybuzz-fix {mode}: expected {self.k} host(s) {want}, got {wrong or statuses}")
        self.kbf_host_seconds[mode] += [h["seconds"] for h in data["hosts"]]
        return sample

    def ssh_loop(self, mode: str, run: int) -> Sample:
        script = self.workdir / "ssh-loop.sh"
        if not script.exists():
            script.write_text(self._loop_script())
        return measure(["bash", str(script)], env=_base_env(), output=self.workdir / f"loop-{mode}-{run}.log")

    def ansible(self, mode: str, run: int) -> Sample:
        if self.bench_python is None:
            raise CommandFailed("no benchmark environment with Ansible")
        cfg = self._ansible_files()
        cp_dir = Path(tempfile.mkdtemp(prefix="cp-", dir=self.workdir))  # no connection reuse across runs
        env = {
            **_base_env(),
            "ANSIBLE_CONFIG": str(cfg),
            "ANSIBLE_HOME": str(self.workdir / "ansible-home"),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(cp_dir),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
        }
        out = self.workdir / f"ansible-{mode}-{run}.log"
        sample = measure(
            [str(self.bench_python.with_name("ansible-playbook")), str(cfg.with_name("ufw.yml"))], env=env, output=out
        )
        recap = re.findall(
            r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", out.read_text(), re.M
        )
        want = 1 if mode == "cold" else 0
        bad = [r for r in recap if int(r[2]) != want or int(r[3]) or int(r[4])]
        if len(recap) != self.k or bad:
            raise CommandFailed(f"ansible {mode}: expected {self.k} host(s) with changed={want}, got {recap}")
        shutil.rmtree(cp_dir, ignore_errors=True)
        return sample

    def _loop_script(self) -> str:
        ssh = shlex.join(
            [
                "ssh",
                "-F",
                "none",
                "-i",
                str(self.lab.identity_file),
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                f"UserKnownHostsFile={self.lab.known_hosts_file}",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "ConnectTimeout=10",
                "-o",
                "ControlMaster=no",
            ]
        )
        remote = " && ".join(r.command() for r in self.rules)
        ips = " ".join(h.ip for h in self.lab.hosts)
        return (
            "#!/bin/bash\n# The original remediation: one ssh per worker, one after the other.\nset -eu\n"
            f'for ip in {ips}; do\n  {ssh} root@"$ip" {shlex.quote(remote)}\ndone\n'
        )

    def _ansible_files(self) -> Path:
        d = self.workdir / "ansible"
        cfg = d / "ansible.cfg"
        if cfg.exists():
            return cfg
        d.mkdir()
        (d / "inventory.ini").write_text(
            "[workers]\n" + "".join(f"{h.name} ansible_host={h.ip}\n" for h in self.lab.hosts)
        )
        items = "".join(
            f"        - {{port: {shlex.quote(r.port or '')}, comment: {json.dumps(r.comment)}}}\n" for r in self.rules
        )
        (d / "ufw.yml").write_text(
            "- name: open the ingress-nginx NodePorts\n  hosts: workers\n  gather_facts: false\n  tasks:\n"
            "    - name: allow from the private network\n      community.general.ufw:\n        rule: allow\n"
            f'        from_ip: {self.rules[0].source}\n        to_port: "{{{{ item.port }}}}"\n'
            f'        proto: {self.rules[0].proto}\n        comment: "{{{{ item.comment }}}}"\n'
            f"      loop:\n{items}"
        )
        ssh_args = (
            "-C -o ControlMaster=auto -o ControlPersist=60s -F none -o IdentitiesOnly=yes "
            f"-o UserKnownHostsFile={self.lab.known_hosts_file} -o GlobalKnownHostsFile=/dev/null "
            "-o StrictHostKeyChecking=yes"
        )
        cfg.write_text(
            "[defaults]\n"
            f"inventory = {d / 'inventory.ini'}\nforks = {self.k}\nhost_key_checking = True\n"
            f"private_key_file = {self.lab.identity_file}\nremote_user = root\n"
            "interpreter_python = /usr/bin/python3\ngathering = explicit\nretry_files_enabled = False\n"
            f"local_tmp = {d / 'tmp'}\nremote_tmp = /tmp/.kbf-bench-ansible\n"
            "[ssh_connection]\npipelining = True\n"
            f"ssh_args = {ssh_args}\n"
        )
        return cfg

    # -- state between runs --------------------------------------------------------------------

    def reset(self, expect_present: bool) -> None:
        """Delete the rules inside every host (not over SSH); check they were there when expected."""
        deletes = " ; ".join(
            "LC_ALL=C " + replace(r, comment="").command().replace("ufw ", "ufw delete ", 1) for r in self.rules
        )

        def one(host: object) -> str:
            return host.run(deletes, timeout=60).stdout  # type: ignore[attr-defined, no-any-return]

        with ThreadPoolExecutor(max_workers=4) as pool:
            outputs = list(pool.map(one, self.lab.hosts))
        if expect_present:
            missing = [
                h.name
                for h, out in zip(self.lab.hosts, outputs, strict=True)
                if out.count("Rule deleted") != len(self.rules)
            ]
            if missing:
                raise CommandFailed(f"rules were not all present after the previous run on: {', '.join(missing)}")
        time.sleep(0.5)


def _base_env() -> dict[str, str]:
    return {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
    }


def run_k(
    k: int,
    runs: int,
    workdir: Path,
    bench_python: Path | None,
    tools: Sequence[str] = TOOLS,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Build a lab of k hosts, run every tool cold and no-op ``runs`` times, interleaved; tear down."""
    names = [HostSpec(f"k8s-worker-{i:02d}", http_listener=False) for i in range(1, k + 1)]
    started = time.monotonic()
    samples: dict[str, dict[str, list[Sample]]] = {t: {m: [] for m in MODES} for t in tools}
    with Lab(names, base_ip=11) as lab:
        built = time.monotonic() - started
        log(f"  lab of {k} host(s) built in {built:.1f}s")
        wd = workdir / f"k{k}"
        wd.mkdir(parents=True, exist_ok=True)
        lab.servers_tsv(wd / "servers.tsv", masters=())
        bench = UfwBench(lab, wd, bench_python)
        runners = {"keybuzz-fix": bench.keybuzz_fix, "ssh loop": bench.ssh_loop, "ansible": bench.ansible}
        first = True
        for run in range(runs):
            order = list(tools[run % len(tools) :]) + list(tools[: run % len(tools)])
            for tool in order:
                bench.reset(expect_present=not first)
                first = False
                for mode in MODES:
                    s = runners[tool](mode, run)
                    samples[tool][mode].append(s)
                    log(
                        f"  K={k} run {run + 1}/{runs} {tool:12} {mode:6} wall {s.wall:6.2f}s  cpu {s.cpu:6.2f}s  "
                        f"machine cpu {s.machine_cpu:6.2f}s"
                    )
        bench.reset(expect_present=True)
        host_seconds = bench.kbf_host_seconds
    return {
        "k": k,
        "build_s": built,
        "samples": samples,
        "kbf_host_seconds": host_seconds,
        "seconds": time.monotonic() - started,
    }
