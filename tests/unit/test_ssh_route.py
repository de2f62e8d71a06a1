"""Where keybuzz-fix connects for a servers.tsv host: ssh_config by HOSTNAME then IP_PRIVEE, servers.tsv last.

No network: the routes (hops, users, ports, known_hosts names) are computed, not connected.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from keybuzz_fix.hosts.sshconfig.config import SshConfig
from keybuzz_fix.hosts.sshconfig.hops import Route
from keybuzz_fix.hosts.sshconfig.misc import SshConfigError
from keybuzz_fix.hosts.sshconfig.tokens import Local
from keybuzz_fix.hosts.sshoptions import SshOptions
from keybuzz_fix.inventory import Host

LOCAL = Local("me", "/home/me", 1000, "laptop.example.com")
WORKER = Host("k8s-worker-01", "10.0.0.11", None, "root", "prod", "k3s", "worker")


def config(tmp_path: Path, text: str, run_exec: Callable[[str], int] | None = None) -> SshConfig:
    path = tmp_path / "config"
    path.write_text(text)
    return SshConfig([(path, True)], local=LOCAL, required=path, run_exec=run_exec)


def route(cfg: SshConfig, host: Host = WORKER, user: str | None = None) -> Route:
    return cfg.route(host.hostname, also=host.private_ip, user=user, default_user=host.user,
                     default_hostname=host.private_ip)  # fmt: skip


def test_without_a_config_servers_tsv_says_it_all(tmp_path: Path) -> None:
    (hop,) = route(config(tmp_path, "")).hops
    assert (hop.hostname, hop.port, hop.user, hop.known_hosts_name) == ("10.0.0.11", 22, "root", "10.0.0.11")
    assert hop.user_known_hosts == ("/home/me/.ssh/known_hosts", "/home/me/.ssh/known_hosts2")


def test_hostname_first_then_the_ip(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        "Host k8s-worker-*\n  User ops\n"
        "Host 10.0.0.*\n  User not-this-one\n  Port 2201\n  HostName 10.9.9.%h\n"
        "Host *\n  IdentitiesOnly yes\n",
    )
    (hop,) = route(cfg).hops
    assert (hop.user, hop.port, hop.identities_only) == ("ops", 2201, True)
    assert hop.hostname == "10.9.9.10.0.0.11"  # the IP lookup's HostName, %h being the IP
    assert hop.known_hosts_name == "[10.9.9.10.0.0.11]:2201"


def test_the_issue_s_config(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        "Host bastion\n  HostName 198.18.0.2\n  User jump\n"
        "Host k8s-worker-*\n  User ops\n  Port 2201\n  ProxyJump bastion\n",
    )
    bastion, target = route(cfg).hops
    assert (bastion.name, bastion.hostname, bastion.port, bastion.user) == ("bastion", "198.18.0.2", 22, "jump")
    assert (target.hostname, target.port, target.user) == ("10.0.0.11", 2201, "ops")
    assert route(cfg).proxied


def test_the_command_line_user_wins(tmp_path: Path) -> None:
    cfg = config(tmp_path, "Host k8s-*\n  User ops\n")
    assert route(cfg, user="admin").target.user == "admin"
    assert SshOptions(ssh_config=tmp_path / "config", system_ssh_config=None, user="admin").route(
        WORKER
    ).target.user == ("admin")


def test_a_jump_chain_in_order_each_hop_with_its_own_config(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        "Host k8s-*\n  ProxyJump a,ops@b:2222\n"
        "Host a\n  HostName 198.18.0.10\n  ProxyJump z\n"
        "Host b\n  HostName 198.18.0.11\n  User ignored-for-b\n"
        "Host z\n  HostName 198.18.0.9\n  ProxyCommand nc %h %p\n",
    )
    hops = route(cfg).hops
    assert [(h.name, h.hostname, h.port, h.user) for h in hops] == [
        ("z", "198.18.0.9", 22, "me"),
        ("a", "198.18.0.10", 22, "me"),
        ("b", "198.18.0.11", 2222, "ops"),  # ProxyJump's user@host:port is ssh -l -p: it wins
        ("k8s-worker-01", "10.0.0.11", 22, "root"),
    ]
    assert hops[0].proxy_shell_command() == "exec nc 198.18.0.9 22"
    assert [h.proxy_command for h in hops[1:]] == [None, None, None]


def test_a_proxycommand_with_its_tokens(tmp_path: Path) -> None:
    cfg = config(tmp_path, "Host k8s-*\n  ProxyCommand ssh -W [%h]:%p -l %r gw # %n %k %%\n  Port 2200\n")
    (hop,) = route(cfg).hops
    assert hop.proxy_shell_command() == "exec ssh -W [10.0.0.11]:2200 -l root gw # k8s-worker-01 k8s-worker-01 %"
    with pytest.raises(SshConfigError, match="unknown key %x"):
        route(config(tmp_path, "Host *\n  ProxyCommand nc %x\n")).target.proxy_shell_command()


def test_jump_loops_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SshConfigError, match="more than 8 jump hosts"):
        route(config(tmp_path, "Host k8s-*\n  ProxyJump a\nHost a\n  ProxyJump b\nHost b\n  ProxyJump a\n"))
    with pytest.raises(SshConfigError, match="jumphost loop via 10.0.0.11"):
        route(config(tmp_path, "Host *\n  ProxyJump root@10.0.0.11\n"))


def test_known_hosts_names(tmp_path: Path) -> None:
    hop = route(config(tmp_path, "Host k8s-*\n  HostKeyAlias K8S.lab\n  Port 2201\n")).target
    assert (hop.known_hosts_name, hop.certificate_name) == ("k8s.lab", "k8s.lab")
    files = route(config(tmp_path, "Host *\n  UserKnownHostsFile ~/kh_%h_%p %d/other ~root/x\n")).target
    assert files.user_known_hosts == ("/home/me/kh_10.0.0.11_22", "/home/me/other", "/root/x")
    assert route(config(tmp_path, "Host *\n  UserKnownHostsFile none\n")).target.user_known_hosts == ()


def test_identity_files_expand_like_ssh(tmp_path: Path) -> None:
    hop = route(config(tmp_path, "Host *\n  IdentityFile ~/.ssh/id_%r@%h\n  IdentityFile %d/k\n  User ops\n")).target
    assert hop.identity_paths() == ("/home/me/.ssh/id_ops@10.0.0.11", "/home/me/k")


def test_strict_host_key_checking_and_hash_known_hosts(tmp_path: Path) -> None:
    hop = route(config(tmp_path, "Host *\n  StrictHostKeyChecking off\n  HashKnownHosts yes\n")).target
    assert (hop.strict_host_key_checking, hop.hash_known_hosts) == ("no", True)
    assert route(config(tmp_path, "")).target.strict_host_key_checking == "ask"


def test_include_is_relative_to_the_user_s_ssh_folder(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".ssh" / "conf.d").mkdir(parents=True)
    (home / ".ssh" / "conf.d" / "10-k8s.conf").write_text("Host k8s-*\n  User from-include\n")
    path = home / ".ssh" / "config"
    path.write_text("Include conf.d/*.conf\nHost *\n  User later\n")
    cfg = SshConfig([(path, True)], local=Local("me", str(home), 1000, "laptop"))
    assert route(cfg).target.user == "from-include"


def test_check_names_the_line_and_runs_no_command(tmp_path: Path) -> None:
    ran: list[str] = []

    def run(command: str) -> int:
        ran.append(command)
        return 0

    cfg = config(tmp_path, 'Match exec "touch /tmp/x"\n  User a\nHost *\n  Port 0\n', run_exec=run)
    with pytest.raises(SshConfigError) as e:
        cfg.check()
    assert str(e.value) == f"{tmp_path / 'config'}:4: bad port '0'"
    assert ran == []


def test_a_missing_explicit_file_is_an_error_and_a_missing_default_is_not(tmp_path: Path) -> None:
    with pytest.raises(SshConfigError, match="cannot open the ssh_config file"):
        SshConfig.for_files(tmp_path / "nope", None, explicit=True).check()
    SshConfig.for_files(tmp_path / "nope", tmp_path / "nope-either").check()
