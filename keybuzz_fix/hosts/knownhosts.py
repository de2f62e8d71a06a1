"""known_hosts as OpenSSH reads it, and OpenSSH host certificates, as plain data (no SSH library).

A line is ``[@cert-authority|@revoked] NAMES KEYTYPE BASE64 [comment]``; NAMES is a
comma-separated pattern list (``*``, ``?``, ``!``, ``[host]:port``) or one hashed name
(``|1|salt|hash``, HMAC-SHA1). Lines OpenSSH would skip (bad markers, bad base64, unknown or
truncated keys, the old RSA1 format) are skipped here too, never an error. Keys are compared as
their SSH wire blobs, so a key type this program cannot use still parses.

A host certificate (PROTOCOL.certkeys) is read into :class:`Certificate`; :func:`certificate_problem`
says what OpenSSH would refuse in it (not a host certificate, not yet or no longer valid, the name
not a listed principal, critical options). Checking the CA's signature needs the SSH library: that
is :mod:`keybuzz_fix.hosts.sshhostkey`'s part.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from keybuzz_fix.hints import hint
from keybuzz_fix.hosts.sshconfig.misc import match_hostname

CA = "cert-authority"
REVOKED = "revoked"
_CERT_SUFFIX = "-cert-v01@openssh.com"
# How many SSH strings/mpints hold the public key in a certificate of each base type.
_KEY_FIELDS = {
    "ssh-rsa": 2,
    "ssh-dss": 4,
    "ecdsa-sha2-nistp256": 2,
    "ecdsa-sha2-nistp384": 2,
    "ecdsa-sha2-nistp521": 2,
    "ssh-ed25519": 1,
    "sk-ecdsa-sha2-nistp256@openssh.com": 3,
    "sk-ssh-ed25519@openssh.com": 2,
}
_HOST_CERT = 2


@dataclass(frozen=True)
class KnownKey:
    """One usable known_hosts line."""

    path: str
    line: int
    marker: str | None  # None, "cert-authority" or "revoked"
    names: str  # as written
    key_type: str
    blob: bytes

    @property
    def where(self) -> str:
        """``path:line``, for messages."""
        return f"{self.path}:{self.line}"

    def matches(self, name: str) -> bool:
        """Whether this line is about ``name`` (``host`` or ``[host]:port``)."""
        if self.names.startswith("|"):
            return _hashed_match(name, self.names)
        return match_hostname(name, self.names) == 1


def parse_known_hosts(text: str, path: str) -> list[KnownKey]:
    """Return the usable lines of a known_hosts text."""
    keys = []
    for number, raw in enumerate(text.split("\n"), 1):
        entry = _parse_line(raw.rstrip("\r"), path, number)
        if entry is not None:
            keys.append(entry)
    return keys


def _parse_line(line: str, path: str, number: int) -> KnownKey | None:
    rest = line.lstrip(" \t")
    if not rest or rest.startswith("#"):
        return None
    marker = None
    if rest.startswith("@"):
        word, _, rest = _word(rest)
        if word not in ("@" + CA, "@" + REVOKED) or not rest:
            return None
        marker = word[1:]
        if rest.startswith("@"):  # only one marker
            return None
    names, _, rest = _word(rest)
    key_type, _, rest = _word(rest)
    data, _, _ = _word(rest)
    if not names or not key_type or not data or key_type.startswith("#") or data.startswith("#"):
        return None
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None
    if key_type_of(blob) != key_type:
        return None
    return KnownKey(path, number, marker, names, key_type, blob)


def _word(text: str) -> tuple[str, str, str]:
    """Split off the first word (space or tab separated); return (word, separator, the rest stripped)."""
    end = next((i for i, c in enumerate(text) if c in " \t"), len(text))
    return text[:end], text[end : end + 1], text[end:].lstrip(" \t")


def _hashed_match(name: str, hashed: str) -> bool:
    parts = hashed.split("|")
    if len(parts) != 4 or parts[1] != "1":
        return False
    try:
        salt = base64.b64decode(parts[2], validate=True)
        digest = base64.b64decode(parts[3], validate=True)
    except (binascii.Error, ValueError):
        return False
    if len(salt) != 20:
        return False
    mine = hmac.new(salt, name.encode("utf-8", "surrogateescape"), hashlib.sha1).digest()
    return hmac.compare_digest(mine, digest)


def hash_name(name: str, salt: bytes | None = None) -> str:
    """Return ``name`` hashed as OpenSSH's HashKnownHosts writes it (``|1|salt|hash``)."""
    salt = salt or os.urandom(20)
    digest = hmac.new(salt, name.encode("utf-8", "surrogateescape"), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


def key_type_of(blob: bytes) -> str | None:
    """Return the type a key blob says it is (its first string), or None for garbage."""
    try:
        value, _ = _string(blob, 0)
        return value.decode("ascii")
    except (ValueError, UnicodeDecodeError):
        return None


def fingerprint(blob: bytes) -> str:
    """Return the OpenSSH SHA256 fingerprint of a key blob."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


_CACHE: dict[tuple[str, int, int, int], list[KnownKey]] = {}
_CACHE_LOCK = threading.Lock()


def read_known_hosts(path: Path) -> list[KnownKey] | None:
    """Return a known_hosts file's usable lines (parsed once per version of the file), None if it is missing.

    Parsing is linear in the lines; once per host would make a fleet run quadratic.
    """
    try:
        st = path.stat()
        version = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
        with _CACHE_LOCK:
            found = _CACHE.get(version)
        if found is not None:
            return found
        text = path.read_bytes().decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        return []
    keys = parse_known_hosts(text, str(path))
    with _CACHE_LOCK:
        if len(_CACHE) > 32:
            _CACHE.clear()
        _CACHE[version] = keys
    return keys


@dataclass(frozen=True)
class Certificate:
    """An OpenSSH certificate, as PROTOCOL.certkeys lays it out."""

    cert_type: str  # e.g. ssh-ed25519-cert-v01@openssh.com
    key_blob: bytes  # the certified key, as a plain key blob
    serial: int
    kind: int  # 1 user, 2 host
    key_id: str
    principals: tuple[str, ...]
    valid_after: int
    valid_before: int
    critical_options: bytes
    signature_key: bytes  # the CA's public key blob
    signature: bytes
    signed: bytes  # everything the signature covers

    @property
    def key_type(self) -> str:
        """The certified key's own type (``ssh-ed25519``)."""
        return self.cert_type[: -len(_CERT_SUFFIX)]


def parse_certificate(blob: bytes) -> Certificate:
    """Read an OpenSSH certificate blob; ValueError if it is not one."""
    cert_type_raw, pos = _string(blob, 0)
    cert_type = cert_type_raw.decode("ascii", "replace")
    base = cert_type[: -len(_CERT_SUFFIX)] if cert_type.endswith(_CERT_SUFFIX) else ""
    if base not in _KEY_FIELDS:
        raise ValueError(f"not a certificate type this program reads: {cert_type}")
    _nonce, pos = _string(blob, pos)
    start = pos
    for _ in range(_KEY_FIELDS[base]):
        _field, pos = _string(blob, pos)
    key_blob = _pack(base.encode()) + blob[start:pos]
    serial, pos = _uint(blob, pos, 8)
    kind, pos = _uint(blob, pos, 4)
    key_id, pos = _string(blob, pos)
    principals_raw, pos = _string(blob, pos)
    valid_after, pos = _uint(blob, pos, 8)
    valid_before, pos = _uint(blob, pos, 8)
    critical, pos = _string(blob, pos)
    _extensions, pos = _string(blob, pos)
    _reserved, pos = _string(blob, pos)
    signature_key, pos = _string(blob, pos)
    signed = blob[:pos]
    signature, pos = _string(blob, pos)
    if pos != len(blob):
        raise ValueError("trailing data after the certificate's signature")
    principals, p = [], 0
    while p < len(principals_raw):
        value, p = _string(principals_raw, p)
        principals.append(value.decode("utf-8", "replace"))
    return Certificate(
        cert_type,
        key_blob,
        serial,
        kind,
        key_id.decode("utf-8", "replace"),
        tuple(principals),
        valid_after,
        valid_before,
        critical,
        signature_key,
        signature,
        signed,
    )


def certificate_problem(cert: Certificate, name: str, now: int) -> str | None:
    """What OpenSSH would refuse in a host certificate presented as ``name`` (its HostName or HostKeyAlias)."""
    if cert.kind != _HOST_CERT:
        return "it is not a host certificate"
    if now < cert.valid_after:
        return "it is not yet valid"
    if now >= cert.valid_before:
        return "it has expired"
    if cert.principals and name not in cert.principals:
        return f"{name} is not one of its principals ({', '.join(cert.principals)})"
    if cert.critical_options:
        return "it carries critical options"
    return None


def _string(data: bytes, pos: int) -> tuple[bytes, int]:
    if pos + 4 > len(data):
        raise ValueError("truncated")
    (size,) = struct.unpack(">I", data[pos : pos + 4])
    end = pos + 4 + size
    if end > len(data):
        raise ValueError("truncated")
    return data[pos + 4 : end], end


def _uint(data: bytes, pos: int, size: int) -> tuple[int, int]:
    if pos + size > len(data):
        raise ValueError("truncated")
    return int.from_bytes(data[pos : pos + size], "big"), pos + size


def _pack(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


@dataclass(frozen=True)
class Verdict:
    """Whether a presented host key is trusted, as OpenSSH's check_host_key would decide, in one line."""

    trusted: bool
    problem: str = ""  # why not, one line
    record: bool = False  # a new key trusted on first use: write it to known_hosts
    certified: bool = False  # trusted through a @cert-authority line


def judge(
    entries: Sequence[KnownKey],
    name: str,
    *,
    principal: str,
    plain: bytes,
    certificate: bytes | None,
    signed_by_ca: Callable[[Certificate], bool],
    trust_new: bool,
    files: Sequence[str],
    now: int,
) -> Verdict:
    """Judge the key a host presents under ``name`` against the known_hosts ``entries``.

    ``plain`` is the host's key blob; ``certificate`` its certificate blob when it presented one
    (checked against the matching @cert-authority keys, ``principal`` being the name it must list;
    a certificate that does not pass falls back to the plain key, as in OpenSSH). A key marked
    @revoked is refused, a known key of the same type that differs is refused (changed), an
    unknown key is refused unless ``trust_new``.
    """
    about = [e for e in entries if e.matches(name)]
    key_type = key_type_of(plain) or "?"
    offered = f"{key_type} {fingerprint(plain)}"
    for e in about:
        if e.marker == REVOKED and e.blob == plain:
            return Verdict(False, f"the host key of {name} ({offered}) is marked @revoked in {e.where}; refusing")
    note = ""
    if certificate is not None:
        try:
            cert = parse_certificate(certificate)
        except ValueError as bad:
            note = f"; its certificate cannot be read ({bad})"
        else:
            for line in about:
                if line.marker == REVOKED and line.blob == cert.signature_key:
                    return Verdict(
                        False, f"the certificate authority that signed {name}'s key is marked @revoked in {line.where}"
                    )
            cas = [e for e in about if e.marker == CA]
            ca = next((e for e in cas if e.blob == cert.signature_key), None)
            if not cas:
                note = f"; it presents a certificate, but no @cert-authority line of known_hosts is for {name}"
            elif ca is None:
                note = (
                    f"; its certificate is signed by {fingerprint(cert.signature_key)}, which the "
                    f"@cert-authority line(s) for {name} ({', '.join(e.where for e in cas)}) do not name"
                )
            else:
                problem = certificate_problem(cert, principal, now)
                if problem is None and not signed_by_ca(cert):
                    problem = "its signature does not verify with the CA key"
                if problem is None:
                    return Verdict(True, certified=True)
                note = f"; its certificate (CA {ca.where}) is not valid: {problem}"
    plains = [e for e in about if e.marker is None]
    if any(e.blob == plain for e in plains):
        return Verdict(True)
    same_type = [e for e in plains if e.key_type == key_type]
    if same_type:
        known = same_type[0]
        return Verdict(
            False,
            f"host key CHANGED for {name}: known_hosts ({known.where}) has {fingerprint(known.blob)}, the host offers "
            f"{fingerprint(plain)}; refusing to connect (verify the host, then fix known_hosts){note}",
        )
    if trust_new:
        return Verdict(True, record=True)
    where = ", ".join(files) or "no known_hosts file (UserKnownHostsFile none)"
    others = f"; known_hosts has only {', '.join(sorted({e.key_type for e in plains}))} for it" if plains else ""
    return Verdict(
        False,
        f"host key for {name} is not in {where} (offered {offered}){others}{note}; verify it and add it"
        + hint("--accept-new-host-keys", ", or pass --accept-new-host-keys to trust it on first use"),
    )


_ALGORITHMS = {
    "ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256"),
    "ssh-ed25519": ("ssh-ed25519",),
    "ecdsa-sha2-nistp256": ("ecdsa-sha2-nistp256",),
    "ecdsa-sha2-nistp384": ("ecdsa-sha2-nistp384",),
    "ecdsa-sha2-nistp521": ("ecdsa-sha2-nistp521",),
}


def preferred_algorithms(entries: Sequence[KnownKey], name: str) -> list[str]:
    """The host key algorithms to ask for first: certificates when a CA is trusted for ``name``, then known types.

    OpenSSH orders its HostKeyAlgorithms the same way, so a host with several keys presents the
    one known_hosts can check.
    """
    about = [e for e in entries if e.matches(name)]
    first: list[str] = []
    if any(e.marker == CA for e in about):
        for algorithms in _ALGORITHMS.values():
            first += [a + _CERT_SUFFIX for a in algorithms]
    for e in about:
        if e.marker is None:
            first += [a for a in _ALGORITHMS.get(e.key_type, ()) if a not in first]
    return first
