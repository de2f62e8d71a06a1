"""known_hosts as OpenSSH reads it, and the verdict on a presented host key or certificate (no network)."""

from __future__ import annotations

import base64
import os
import struct
import time
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from keybuzz_fix.hosts.knownhosts import (
    Verdict,
    fingerprint,
    hash_name,
    judge,
    parse_certificate,
    parse_known_hosts,
    preferred_algorithms,
)
from keybuzz_fix.hosts.sshhostkey import _signed_by_ca

NOW = int(time.time())


def pack(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


@dataclass(frozen=True)
class Key:
    private: Ed25519PrivateKey

    @classmethod
    def new(cls) -> Key:
        return cls(Ed25519PrivateKey.generate())

    @property
    def raw(self) -> bytes:
        return self.private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def blob(self) -> bytes:
        return pack(b"ssh-ed25519") + pack(self.raw)

    def line(self, names: str, marker: str = "") -> str:
        return f"{marker + ' ' if marker else ''}{names} ssh-ed25519 {base64.b64encode(self.blob).decode()}"

    def certify(
        self,
        host: Key,
        *,
        kind: int = 2,
        principals: tuple[str, ...] = ("web1.lab.example",),
        after: int = 0,
        before: int = 2**64 - 1,
        critical: bytes = b"",
    ) -> bytes:
        """Sign ``host``'s key as this CA: an OpenSSH certificate blob (PROTOCOL.certkeys)."""
        body = (
            pack(b"ssh-ed25519-cert-v01@openssh.com")
            + pack(os.urandom(32))
            + pack(host.raw)
            + struct.pack(">Q", 7)
            + struct.pack(">I", kind)
            + pack(b"key id")
            + pack(b"".join(pack(p.encode()) for p in principals))
            + struct.pack(">QQ", after, before)
            + pack(critical)
            + pack(b"")
            + pack(b"")
            + pack(self.blob)
        )
        return body + pack(pack(b"ssh-ed25519") + pack(self.private.sign(body)))


def verdict(lines: list[str], name: str, key: Key, cert: bytes | None = None, trust_new: bool = False) -> Verdict:
    return judge(
        parse_known_hosts("\n".join(lines), "kh"),
        name,
        principal=name.strip("[").split("]")[0],
        plain=key.blob,
        certificate=cert,
        signed_by_ca=_signed_by_ca,
        trust_new=trust_new,
        files=["kh"],
        now=NOW,
    )


HOST, OTHER, CA = Key.new(), Key.new(), Key.new()


@pytest.mark.parametrize(
    "names",
    ["10.0.0.11", "web1,10.0.0.11", "10.0.0.*", "10.0.0.1?", "!10.0.0.12,10.0.0.*", "WEB1,10.0.0.11"],
)
def test_a_known_key_by_name_pattern_or_list(names: str) -> None:
    assert verdict([HOST.line(names)], "10.0.0.11", HOST) == Verdict(True)


def test_hashed_names_and_ports() -> None:
    assert verdict([HOST.line(hash_name("10.0.0.11"))], "10.0.0.11", HOST).trusted
    assert verdict([HOST.line(hash_name("[10.0.0.11]:2201"))], "[10.0.0.11]:2201", HOST).trusted
    assert not verdict([HOST.line("10.0.0.11")], "[10.0.0.11]:2201", HOST).trusted  # another port, another entry
    assert verdict([HOST.line("[10.0.0.*]:2201")], "[10.0.0.11]:2201", HOST).trusted


def test_a_negated_pattern_excludes() -> None:
    assert not verdict([HOST.line("!10.0.0.11,10.0.0.*")], "10.0.0.11", HOST).trusted


def test_a_changed_key_is_refused_with_both_fingerprints() -> None:
    found = verdict(["# first", OTHER.line("10.0.0.11")], "10.0.0.11", HOST, trust_new=True)
    assert not found.trusted
    assert found.problem.startswith(f"host key CHANGED for 10.0.0.11: known_hosts (kh:2) has {fingerprint(OTHER.blob)}")
    assert fingerprint(HOST.blob) in found.problem


def test_an_unknown_key_is_refused_unless_trusted_on_first_use() -> None:
    found = verdict([OTHER.line("10.0.0.12")], "10.0.0.11", HOST)
    assert not found.trusted and "host key for 10.0.0.11 is not in kh (offered ssh-ed25519 SHA256:" in found.problem
    assert "--accept-new-host-keys" in found.problem
    assert verdict([OTHER.line("10.0.0.12")], "10.0.0.11", HOST, trust_new=True) == Verdict(True, record=True)


def test_a_revoked_key_is_refused_even_when_known() -> None:
    found = verdict([HOST.line("10.0.0.11"), HOST.line("*", "@revoked")], "10.0.0.11", HOST, trust_new=True)
    assert not found.trusted and "is marked @revoked in kh:2" in found.problem


def test_a_certificate_from_a_trusted_ca() -> None:
    cert = CA.certify(HOST)
    assert verdict([CA.line("*.lab.example", "@cert-authority")], "web1.lab.example", HOST, cert) == Verdict(
        True, certified=True
    )


@pytest.mark.parametrize(
    ("cert", "lines", "problem"),
    [
        (CA.certify(HOST, before=NOW - 10), [CA.line("*", "@cert-authority")], "is not valid: it has expired"),
        (CA.certify(HOST, after=NOW + 3600), [CA.line("*", "@cert-authority")], "is not valid: it is not yet valid"),
        (CA.certify(HOST, kind=1), [CA.line("*", "@cert-authority")], "it is not a host certificate"),
        (CA.certify(HOST, principals=("db1",)), [CA.line("*", "@cert-authority")], "not one of its principals (db1)"),
        (CA.certify(HOST, critical=pack(b"x") + pack(b"")), [CA.line("*", "@cert-authority")], "critical options"),
        (OTHER.certify(HOST), [CA.line("*", "@cert-authority")], "which the @cert-authority line(s) for"),
        (CA.certify(HOST), [OTHER.line("10.*")], "no @cert-authority line of known_hosts is for web1.lab.example"),
    ],
)
def test_a_certificate_that_does_not_pass_falls_back_to_the_plain_key(
    cert: bytes, lines: list[str], problem: str
) -> None:
    found = verdict(lines, "web1.lab.example", HOST, cert)
    assert not found.trusted and problem in found.problem and "\n" not in found.problem
    assert verdict([*lines, HOST.line("web1.lab.example")], "web1.lab.example", HOST, cert) == Verdict(True)


def test_a_forged_certificate_signature_does_not_verify() -> None:
    cert = bytearray(CA.certify(HOST))
    cert[-5] ^= 0xFF
    found = verdict([CA.line("*", "@cert-authority")], "web1.lab.example", HOST, bytes(cert))
    assert not found.trusted and "its signature does not verify with the CA key" in found.problem


def test_a_revoked_ca_is_refused() -> None:
    lines = [CA.line("*", "@cert-authority"), CA.line("*", "@revoked")]
    found = verdict(lines, "web1.lab.example", HOST, CA.certify(HOST))
    assert not found.trusted and "certificate authority that signed web1.lab.example's key is marked @revoked" in (
        found.problem
    )


def test_certificates_parse_and_refuse_garbage() -> None:
    cert = parse_certificate(CA.certify(HOST, principals=("a", "b")))
    assert (cert.key_type, cert.key_blob, cert.principals, cert.signature_key) == (
        "ssh-ed25519",
        HOST.blob,
        ("a", "b"),
        CA.blob,
    )
    for junk in (b"", b"\x00\x00\x00\x05hello", HOST.blob, CA.certify(HOST)[:-3], CA.certify(HOST) + b"x"):
        with pytest.raises(ValueError):
            parse_certificate(junk)


def test_lines_openssh_skips_are_skipped() -> None:
    text = "\n".join(
        [
            "@cert-authority",
            "@bogus web1 ssh-ed25519 AAAA",
            "@cert-authority @revoked web1 " + HOST.line("x").split(" ", 1)[1],
            "web1 ssh-ed25519",
            "web1 ssh-ed25519 !!!",
            "web1 ecdsa-sha2-nistp256 " + HOST.line("x").split()[-1],  # the type and the key disagree
            "web1 1024 35 1234567890",
            "   ",
            "# comment",
        ]
    )
    assert parse_known_hosts(text, "kh") == []


def test_the_algorithms_asked_for_first() -> None:
    rsa = "web1 ssh-rsa " + base64.b64encode(pack(b"ssh-rsa") + pack(b"\x01\x00\x01") + pack(b"\x00")).decode()
    entries = parse_known_hosts("\n".join([rsa, CA.line("*.lab.example", "@cert-authority")]), "kh")
    assert preferred_algorithms(entries, "web1")[:2] == ["rsa-sha2-512", "rsa-sha2-256"]
    first = preferred_algorithms(entries, "web1.lab.example")
    assert "ssh-ed25519-cert-v01@openssh.com" in first and all(a.endswith("-cert-v01@openssh.com") for a in first)
