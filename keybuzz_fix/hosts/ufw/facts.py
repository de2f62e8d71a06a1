"""What one host's UFW looks like: the probe (one remote script) and the pure parsers of what it prints.

The probe reads what ``ufw status verbose`` and ``ufw show added`` read (see
:mod:`keybuzz_fix.hosts.ufw.files`) without starting ufw: a no-op run starts no Python on the host,
and a run that adds rules starts one per ``ufw allow``. Where ufw's files are not in their usual
place it falls back to asking ufw itself (those two commands), with the same result.
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass

from keybuzz_fix.hosts.sections import section_header, split_sections
from keybuzz_fix.hosts.ufw import files as ufw_files
from keybuzz_fix.hosts.ufw.rules import ParseError, UfwRule, parse_rule_command

IPTABLES = "/usr/sbin/iptables"  # the one ufw runs (ufw.common.iptables_dir)


@dataclass(frozen=True)
class UfwFacts:
    """What one host's UFW looks like."""

    installed: bool
    active: bool = False
    default_incoming: str | None = None
    rules: tuple[UfwRule, ...] = ()
    ssh_client_ip: str | None = None
    ssh_port: int | None = None


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
    return "; ".join(
        [
            f'{section_header("ssh")}; echo "$SSH_CONNECTION"',
            f"if ! command -v ufw >/dev/null 2>&1; then {section_header('missing')}; exit 0; fi",
            files + asked,
            section_header("end"),
        ]
    )


UFW_PROBE = ufw_probe()


def parse_ufw_facts(text: str, *, known: UfwFacts | None = None) -> UfwFacts:
    """Parse the output of :func:`ufw_probe`; ``known`` supplies the status a fallback read-back left out."""
    sections = split_sections(text)
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
    else:
        assert known is not None
        active, default = known.active, known.default_incoming
    return UfwFacts(
        installed=True,
        active=active,
        default_incoming=default,
        rules=parse_show_added(added_text),
        ssh_client_ip=client_ip,
        ssh_port=ssh_port,
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
    return UfwFacts(
        installed=True,
        active=active,  # an inactive ufw enforces no policy: none, as ufw status says
        default_incoming=ufw_files.default_incoming(defaults) if active else None,
        rules=ufw_files.merge(rules, rules6),
        ssh_client_ip=client_ip,
        ssh_port=ssh_port,
    )


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
