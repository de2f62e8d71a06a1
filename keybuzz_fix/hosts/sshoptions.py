"""How to reach and trust the hosts: the command line's SSH choices over the ssh_config files' (no paramiko).

:class:`SshOptions` is what every SSH connection of a run is made with (and the key the jump host
connections are shared under); :class:`AcceptedKeys` collects the host keys recorded under
``--accept-new-host-keys`` for the report. Commands import it without loading paramiko.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from keybuzz_fix.hosts.sshconfig.config import SYSTEM_CONFIG, SshConfig
from keybuzz_fix.hosts.sshconfig.hops import Route
from keybuzz_fix.inventory import Host


@dataclass(frozen=True)
class SshOptions:
    """How to reach and trust the hosts: the command line's choices, over the ssh_config files'."""

    known_hosts: Path | None = None  # --known-hosts, for every hop; None: each hop's UserKnownHostsFile
    identity: Path | None = None  # --identity, tried first
    accept_new_host_keys: bool = False
    connect_timeout: float = 10.0
    command_timeout: float = 60.0  # a live command (the host answers its keepalives)
    silence_timeout: float = 10.0  # a host that answers nothing at all, not even a keepalive, for this long is lost
    port: int = 22  # where the config names none
    ssh_config: Path | None = field(default_factory=lambda: Path.home() / ".ssh" / "config")  # None: none at all
    system_ssh_config: Path | None = SYSTEM_CONFIG  # read after ssh_config (not with --ssh-config, as ssh -F)
    user: str | None = None  # --user: wins over ssh_config's User, as ssh -l does
    config: SshConfig = field(init=False, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        explicit = self.system_ssh_config is None and self.ssh_config is not None
        config = SshConfig.for_files(self.ssh_config, self.system_ssh_config, explicit=explicit)
        object.__setattr__(self, "config", config)

    def route(self, host: Host) -> Route:
        """The hops to ``host``: options for HOSTNAME, then IP_PRIVEE; servers.tsv where the config says nothing."""
        return self.config.route(
            host.hostname,
            also=host.private_ip,
            user=self.user,
            default_user=host.user,
            default_hostname=host.private_ip,
        )

    def check_config(self) -> None:
        """Read the ssh_config files through once, so that a bad line stops the run before any host."""
        self.config.check()


@dataclass
class AcceptedKeys:
    """Host keys recorded under ``--accept-new-host-keys``, for the report."""

    entries: list[tuple[str, str]] = field(default_factory=list)  # (host, fingerprint)
    where: Path | None = None  # the known_hosts file the last one went to
