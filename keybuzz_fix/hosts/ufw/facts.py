"""What one host's UFW looks like: the probe (one remote script) and the pure parsers of what it prints.

The probe reads what ``ufw status verbose`` and ``ufw show added`` read (see
:mod:`keybuzz_fix.hosts.ufw.files`) without starting ufw: a no-op run starts no Python on the host,
and a run that adds rules starts one per ``ufw allow``. Where ufw's files are not in their usual
place it falls back to asking ufw itself (those two commands), with the same result.
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass, replace

from keybuzz_fix.hosts.sections import MARK, section_header, split_sections
from keybuzz_fix.hosts.ufw import files as ufw_files
from keybuzz_fix.hosts.ufw.apps import AppProfile, parse_app_profiles
from keybuzz_fix.hosts.ufw.rules import ParseError, UfwRule, parse_rule_command
from keybuzz_fix.hosts.ufw.ruleset import POLICIES, Ruleset, rule_families

IPTABLES = "/usr/sbin/iptables"  # the one ufw runs (ufw.common.iptables_dir)
APPS_DIR = "/etc/ufw/applications.d"
_SHIPPED_PROFILES = (
    AppProfile("OpenSSH", (("tcp", "22"),)),
)  # openssh-server's /etc/ufw/applications.d/openssh-server


@dataclass(frozen=True)
class UfwFacts:
    """What one host's UFW looks like: what ``ufw status`` says, and what the verdict model needs.

    ``rules`` is the list ``ufw show added`` prints (one line per command); ``rules4`` and ``rules6``
    are user.rules and user6.rules, each in its own order, which is what the kernel judges by.
    ``default_incoming`` is the policy ufw enforces now (``None`` when inactive, as ``ufw status``
    says); ``incoming_policy`` and ``routed_policy`` what /etc/default/ufw sets, enforced once
    active. ``ipv6`` is IPV6=yes on a kernel with IPv6. ``profiles`` are the applications.d
    profiles; ``addresses`` the host's (interface, address) pairs, to know where traffic arrives.
    """

    installed: bool
    active: bool = False
    default_incoming: str | None = None
    rules: tuple[UfwRule, ...] = ()
    ssh_client_ip: str | None = None
    ssh_port: int | None = None
    ssh_server_ip: str | None = None  # the host's address the SSH connection came in on
    rules4: tuple[UfwRule, ...] | None = None  # None: each rule of ``rules`` in the families ufw writes it to
    rules6: tuple[UfwRule, ...] | None = None
    incoming_policy: str | None = None  # None: ``default_incoming``, else deny
    routed_policy: str = "deny"
    ipv6: bool = True
    profiles: tuple[AppProfile, ...] = ()
    addresses: tuple[tuple[str, str], ...] = ()

    def ruleset(self, *, active: bool | None = None) -> Ruleset:
        """Return the verdict model's view of this host (``active``: as if ufw were, or were not, enabled).

        Facts read without ufw's files (``ufw show added``) put each rule in the families ufw writes
        it to. A profile the host did not list but ufw ships (OpenSSH) is known.
        """
        rules4 = self.rules4 if self.rules4 is not None else tuple(r for r in self.rules if 4 in rule_families(r))
        rules6 = self.rules6 if self.rules6 is not None else tuple(r for r in self.rules if 6 in rule_families(r))
        names = {p.name for p in self.profiles}
        shipped = tuple(p for p in _SHIPPED_PROFILES if p.name not in names)
        incoming = self.incoming_policy or (self.default_incoming if self.default_incoming in POLICIES else "deny")
        return Ruleset(
            rules4=rules4,
            rules6=rules6 if self.ipv6 else (),
            incoming=incoming,
            routed=self.routed_policy,
            active=self.active if active is None else active,
            ipv6=self.ipv6,
            profiles=self.profiles + shipped,
        )

    def interface_of(self, address: str | None) -> str | None:
        """Return the interface that holds ``address`` (the host's IP_PRIVEE), if the probe saw it."""
        return next((iface for iface, a in self.addresses if a == address), None)


def ufw_probe(*, status: bool = True) -> str:
    """Return the facts probe: is ufw there, its status, its rules, the SSH connection as the host sees it.

    One round trip. File lines are printed behind a ``|`` so that none can pass for a section mark.
    ``status=False`` leaves ``ufw status verbose`` out of the fallback (a read-back after adding
    rules, which cannot change the status).
    """
    chains = " ".join(ufw_files.CHAINS)
    files = (
        f"if [ -r {ufw_files.RULES_FILE} ] && [ -r {ufw_files.DEFAULTS_FILE} ]; then "
        f"{section_header('defaults')}; sed 's/^/|/' {ufw_files.DEFAULTS_FILE}; "
        f"{section_header('kernel-ipv6')}; if [ -e /proc/sys/net/ipv6 ]; then echo yes; else echo no; fi; "
        f"{section_header('chains')}; for c in {chains}; do "
        f'{IPTABLES} -w 5 -n -L ufw-user-$c >/dev/null 2>&1; echo "$c $?"; done; '
        f"{section_header('rules')}; sed 's/^/|/' {ufw_files.RULES_FILE}; "
        f"if [ -r {ufw_files.RULES6_FILE} ]; then "
        f"{section_header('rules6')}; sed 's/^/|/' {ufw_files.RULES6_FILE}; fi; "
        "else "
    )
    asked = (
        f"{section_header('status')}; LC_ALL=C ufw status verbose 2>&1; " if status else ""
    ) + f"{section_header('added')}; LC_ALL=C ufw show added 2>&1; fi"
    extras = (
        f"{section_header('addresses')}; ip -o addr show 2>/dev/null | sed 's/^/|/'; "
        f'for f in {APPS_DIR}/*; do if [ -f "$f" ] && [ -r "$f" ]; then '
        f'echo "{MARK} app ${{f##*/}}"; sed \'s/^/|/\' "$f"; fi; done'
    )
    return "; ".join(
        [
            f'{section_header("ssh")}; echo "$SSH_CONNECTION"',
            f"if ! command -v ufw >/dev/null 2>&1; then {section_header('missing')}; exit 0; fi",
            files + asked,
            extras,
            section_header("end"),
        ]
    )


UFW_PROBE = ufw_probe()


def parse_ufw_facts(text: str, *, known: UfwFacts | None = None) -> UfwFacts:
    """Parse the output of :func:`ufw_probe`; ``known`` supplies the status a fallback read-back left out."""
    sections = split_sections(text)
    facts = _parse(sections, known)
    parts = " ".join(sections.get("ssh", [])).split()
    if len(parts) == 4 and facts.ssh_client_ip is not None:
        try:
            return replace(facts, ssh_server_ip=str(ipaddress.ip_address(parts[2])))
        except ValueError:
            pass
    return facts


def _parse(sections: dict[str, list[str]], known: UfwFacts | None) -> UfwFacts:
    client_ip, ssh_port = _parse_ssh_connection(" ".join(sections.get("ssh", [])))
    if "missing" in sections:
        return UfwFacts(installed=False, ssh_client_ip=client_ip, ssh_port=ssh_port)
    if "rules" in sections:
        return _from_files(sections, client_ip, ssh_port)
    if "added" not in sections or "end" not in sections or ("status" not in sections and known is None):
        raise ParseError("probe output was cut short (no complete ufw status / show added)")
    status_text = "\n".join(sections.get("status", []))
    added_text = "\n".join(sections["added"])
    if "ERROR" in status_text or "ERROR" in added_text:
        raise ParseError((status_text + added_text).strip().splitlines()[-1])
    if "status" in sections:
        active, default = parse_status(status_text)
        routed = parse_routed(status_text)
    else:
        assert known is not None
        active, default, routed = known.active, known.default_incoming, known.routed_policy
    rules = parse_show_added(added_text)
    try:
        for r in rules:
            rule_families(r)  # each in the families ufw writes it to (see UfwFacts.ruleset)
    except ValueError as e:
        raise ParseError(f"ufw show added: {e}") from None
    # Without ufw's files, each rule is taken to be in the families ufw writes it to; a leftover
    # of one family alone (a v4 twin deleted by number) cannot be told from the command form.
    return UfwFacts(
        installed=True,
        active=active,
        default_incoming=default,
        rules=rules,
        ssh_client_ip=client_ip,
        ssh_port=ssh_port,
        incoming_policy=default if default in POLICIES else (known.incoming_policy if known else None),
        routed_policy=routed,
        profiles=_profiles(sections),
        addresses=parse_addresses(sections.get("addresses", [])),
    )


def _from_files(sections: dict[str, list[str]], client_ip: str | None, ssh_port: int | None) -> UfwFacts:
    if "end" not in sections or "chains" not in sections or "defaults" not in sections:
        raise ParseError("probe output was cut short (ufw's files were not all read)")
    defaults = ufw_files.parse_defaults(_file(sections["defaults"]))
    ipv6 = ufw_files.uses_ipv6(defaults, "yes" in (line.strip() for line in sections.get("kernel-ipv6", [])))
    rules = ufw_files.parse_user_rules(_file(sections["rules"]), ufw_files.RULES_FILE)
    rules6 = []
    if ipv6:
        if "rules6" not in sections:
            raise ParseError(f"{ufw_files.RULES6_FILE} is not readable, and IPV6=yes in {ufw_files.DEFAULTS_FILE}")
        rules6 = ufw_files.parse_user_rules(_file(sections["rules6"]), ufw_files.RULES6_FILE)
    active = ufw_files.chains_active(sections["chains"])
    merged = ufw_files.merge(rules, rules6)
    derived = UfwFacts(installed=True, rules=merged, ipv6=ipv6).ruleset()
    # The per-family lists are kept only where they say more than the merged one (a family's twin
    # deleted, another order): ``rules`` stays what most readers need.
    per_family = (tuple(rules), tuple(rules6)) != (derived.rules4, derived.rules6)
    routed = ufw_files.default_incoming({"default_input_policy": defaults.get("default_forward_policy", "drop")})
    return UfwFacts(
        installed=True,
        active=active,  # an inactive ufw enforces no policy: none, as ufw status says
        default_incoming=ufw_files.default_incoming(defaults) if active else None,
        rules=merged,
        ssh_client_ip=client_ip,
        ssh_port=ssh_port,
        rules4=tuple(rules) if per_family else None,
        rules6=tuple(rules6) if per_family else None,
        incoming_policy=ufw_files.default_incoming(defaults) or "deny",
        routed_policy=routed or "deny",
        ipv6=ipv6,
        profiles=_profiles(sections),
        addresses=parse_addresses(sections.get("addresses", [])),
    )


def _profiles(sections: dict[str, list[str]]) -> tuple[AppProfile, ...]:
    """The applications.d profiles the probe printed (one ``app <file>`` section per file)."""
    files = {name[4:]: _file(lines) for name, lines in sections.items() if name.startswith("app ")}
    return tuple(parse_app_profiles(files).values())


def parse_addresses(lines: list[str]) -> tuple[tuple[str, str], ...]:
    """Parse ``ip -o addr show`` lines (behind ``|``) into (interface, address) pairs."""
    out: list[tuple[str, str]] = []
    for line in lines:
        fields = line.lstrip("|").split()
        if len(fields) >= 4 and fields[2] in ("inet", "inet6"):
            try:
                address = str(ipaddress.ip_interface(fields[3]).ip)
            except ValueError:
                continue
            out.append((fields[1].split("@", 1)[0], address))
    return tuple(out)


def _file(lines: list[str]) -> str:
    """Undo the ``|`` the probe puts before each line of a file."""
    return "\n".join(line[1:] for line in lines if line.startswith("|"))


def _parse_ssh_connection(value: str) -> tuple[str | None, int | None]:
    parts = value.split()
    if len(parts) != 4:
        return None, None
    try:
        return str(ipaddress.ip_address(parts[0])), int(parts[3])
    except ValueError:
        return None, None


def parse_show_added(text: str) -> tuple[UfwRule, ...]:
    """Parse ``ufw show added`` output into rules, in order.

    ufw prints a comment raw between single quotes, so a comment holding a line break (set by
    someone else: the tool never writes one) continues the rule on the next lines.
    """
    rules: list[UfwRule] = []
    pending = ""
    for raw in text.split("\n"):
        line = f"{pending}\n{raw}" if pending else raw
        if not pending and (
            not line.strip() or line.strip().startswith(("Added user rules", "WARN: ")) or line.strip() == "(None)"
        ):
            continue  # ufw warns on stderr (the probe merges it) about the owner and mode of its own files
        if _open_quote(line):
            pending = line
            continue
        pending = ""
        rules.append(parse_rule_command(line.strip()))
    if pending:
        rules.append(parse_rule_command(pending.strip()))  # unbalanced to the end: a ParseError
    return tuple(rules)


def _open_quote(line: str) -> bool:
    try:
        shlex.split(line)
    except ValueError as e:
        return "closing quotation" in str(e)
    return False


def parse_status(text: str) -> tuple[bool, str | None]:
    """Return (active, default incoming policy) from ``ufw status verbose``."""
    active: bool | None = None
    default: str | None = None
    for line in text.splitlines():
        if line.startswith("Status:") and active is None:  # the header; a rule's comment may hold such a line
            active = line.split(":", 1)[1].strip() == "active"
        elif line.startswith("Default:") and default is None:
            first = line.split(":", 1)[1].split(",")[0].strip()  # "deny (incoming)"
            default = first.split(" ")[0]
    if active is None:
        raise ParseError(f"no 'Status:' line in ufw status output: {text.strip()[:200]!r}")
    return active, default


def parse_routed(text: str) -> str:
    """Return the routed policy from ``ufw status verbose`` (``disabled`` routing counts as deny)."""
    for line in text.splitlines():
        if line.startswith("Default:"):
            for part in line.split(":", 1)[1].split(","):
                words = part.split()
                if len(words) == 2 and words[1] == "(routed)":
                    return words[0] if words[0] in POLICIES else "deny"
            break
    return "deny"
