"""The host key check of one SSH hop: known_hosts files, trust on first use, certificates.

Every presented key is judged by :mod:`.knownhosts` against ``--known-hosts``, else the hop's
UserKnownHostsFile and GlobalKnownHostsFile: an unknown key is refused unless the operator opted
into trust-on-first-use (then it is recorded, hashed with HashKnownHosts); a changed or @revoked
key is always refused; a certificate's signature is checked here with paramiko.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keybuzz_fix.errors import HostKeyError
from keybuzz_fix.hints import hint
from keybuzz_fix.hosts import knownhosts
from keybuzz_fix.hosts.sshconfig.hops import Hop
from keybuzz_fix.hosts.ssherrors import _why
from keybuzz_fix.hosts.sshoptions import AcceptedKeys, SshOptions

if TYPE_CHECKING:
    import paramiko

_KNOWN_HOSTS_LOCK = threading.Lock()


def fingerprint(key: paramiko.PKey) -> str:
    """Return the OpenSSH-style SHA256 fingerprint of a key."""
    return knownhosts.fingerprint(key.asbytes())


class _HostKeyCheck:
    """The host key policy of one hop: which algorithms to ask for, and whether to trust what is presented.

    paramiko is given no known keys of its own, so every presented key comes here.
    """

    def __init__(self, hop: Hop, options: SshOptions, accepted: AcceptedKeys | None, label: str, role: str) -> None:
        self.hop, self.options, self.accepted, self.label, self.role = hop, options, accepted, label, role
        if options.known_hosts is not None:
            self.files: list[str] = [str(options.known_hosts)]
            self.writable: str | None = str(options.known_hosts)
        else:
            self.files = [*hop.user_known_hosts, *hop.global_known_hosts]
            self.writable = hop.user_known_hosts[0] if hop.user_known_hosts else None
        self.entries: list[knownhosts.KnownKey] = []
        self.existing: list[str] = []
        for path in self.files:
            try:
                found = knownhosts.read_known_hosts(Path(path))
            except OSError as e:
                raise HostKeyError(label, f"{role}cannot read known_hosts {path}: {_why(e)}") from e
            if found is not None:
                self.entries += found
                self.existing.append(path)
        self.trust_new = options.accept_new_host_keys or hop.strict_host_key_checking == "accept-new"
        if not self.existing and not self.trust_new:
            files = ", ".join(self.files) or "none (UserKnownHostsFile none)"
            raise HostKeyError(
                label,
                f"{role}known_hosts file {files} does not exist; add the host keys (ssh-keyscan, checked out of band)"
                + hint("--accept-new-host-keys", " or pass --accept-new-host-keys"),
            )

    def transport(self, sock: Any, disabled_algorithms: Any = None) -> paramiko.Transport:
        """Make the transport ask first for the host key algorithms known_hosts can check (OpenSSH's order)."""
        import paramiko

        transport = paramiko.Transport(sock, disabled_algorithms=disabled_algorithms)
        first = knownhosts.preferred_algorithms(self.entries, self.hop.known_hosts_name)
        if first:
            options = transport.get_security_options()
            known = getattr(paramiko.Transport, "_key_info", {})
            usable = [a for a in first if a in known]
            options.key_types = [*usable, *(a for a in options.key_types if a not in usable)]
        return transport

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        """Trust the presented key, record it (first use), or refuse it with one line."""
        hop = self.hop
        blob = getattr(getattr(key, "public_blob", None), "key_blob", None)
        plain = key.asbytes()
        verdict = knownhosts.judge(
            self.entries,
            hop.known_hosts_name,
            principal=hop.certificate_name,
            plain=plain,
            certificate=blob if blob and blob != plain else None,
            signed_by_ca=_signed_by_ca,
            trust_new=self.trust_new,
            files=self.existing or self.files,
            now=int(time.time()),
        )
        if not verdict.trusted:
            raise HostKeyError(self.label, self.role + verdict.problem)
        if verdict.record:
            if self.writable is not None:
                _record_host_key(Path(self.writable), hop.known_hosts_name, plain, hop.hash_known_hosts)
            if self.accepted is not None:
                with _KNOWN_HOSTS_LOCK:
                    self.accepted.entries.append((self.label, f"{key.get_name()} {fingerprint(key)}"))
                    self.accepted.where = Path(self.writable) if self.writable is not None else None


def _signed_by_ca(cert: knownhosts.Certificate) -> bool:
    """Whether the CA key named in a certificate signed it (paramiko checks the signature)."""
    import paramiko
    from paramiko.message import Message

    ca_type = knownhosts.key_type_of(cert.signature_key)
    try:
        ca = paramiko.PKey.from_type_string(ca_type or "", cert.signature_key)
        return bool(ca.verify_ssh_sig(cert.signed, Message(cert.signature)))
    except (paramiko.SSHException, ValueError, TypeError, IndexError):
        return False


def _record_host_key(known: Path, name: str, blob: bytes, hashed: bool) -> None:
    """Append one host key to known_hosts (created 0600, parent 0700), under a lock; hashed with HashKnownHosts."""
    import base64

    line_name = knownhosts.hash_name(name) if hashed else name
    with _KNOWN_HOSTS_LOCK:
        known.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(known, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="ascii") as f:
            f.write(f"{line_name} {knownhosts.key_type_of(blob)} {base64.b64encode(blob).decode()}\n")
