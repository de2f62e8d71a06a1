"""The UFW facts probe: one remote script, and the pure parser of what it prints.

The probe reads what ``ufw status verbose`` and ``ufw show added`` read (see
:mod:`keybuzz_fix.hosts.ufw.files`) without starting ufw: a no-op run starts no Python on the host, and
a run that adds rules starts one per ``ufw allow``. Where ufw's files are not in their usual place
it falls back to asking ufw itself, with the same result.
"""

from __future__ import annotations

import ipaddress

from keybuzz_fix.hosts.ufw import files as ufw_files
from keybuzz_fix.hosts.ufw.rules import PROBE_MARK, ParseError, UfwFacts, parse_show_added, parse_status

IPTABLES = "/usr/sbin/iptables"  # the one ufw runs (ufw.common.iptables_dir)


def probe_script(*, status: bool = True) -> str:
    """Return the facts probe: is ufw there, its status, its rules, the SSH connection as the host sees it.

    One round trip. File lines are printed behind a ``|`` so that none can pass for a section mark.
    ``status=False`` leaves ``ufw status verbose`` out of the fallback (a read-back after adding
    rules, which cannot change the status).
    """
    m = PROBE_MARK
    chains = " ".join(ufw_files.CHAINS)
    files = (
        f"if [ -r {ufw_files.RULES_FILE} ] && [ -r {ufw_files.DEFAULTS_FILE} ]; then "
        f"echo '{m} defaults'; sed 's/^/|/' {ufw_files.DEFAULTS_FILE}; "
        f"echo '{m} kernel-ipv6'; if [ -e /proc/sys/net/ipv6 ]; then echo yes; else echo no; fi; "
        f"echo '{m} chains'; for c in {chains}; do "
        f'{IPTABLES} -w 5 -n -L ufw-user-$c >/dev/null 2>&1; echo "$c $?"; done; '
        f"echo '{m} rules'; sed 's/^/|/' {ufw_files.RULES_FILE}; "
        f"if [ -r {ufw_files.RULES6_FILE} ]; then echo '{m} rules6'; sed 's/^/|/' {ufw_files.RULES6_FILE}; fi; "
        "else "
    )
    asked = (
        f"echo '{m} status'; LC_ALL=C ufw status verbose 2>&1; " if status else ""
    ) + f"echo '{m} added'; LC_ALL=C ufw show added 2>&1; fi"
    return "; ".join(
        [
            f"echo '{m} ssh'; echo \"$SSH_CONNECTION\"",
            f"if ! command -v ufw >/dev/null 2>&1; then echo '{m} missing'; exit 0; fi",
            files + asked,
            f"echo '{m} end'",
        ]
    )


PROBE_SCRIPT = probe_script()


def parse_probe(text: str, *, known: UfwFacts | None = None) -> UfwFacts:
    """Parse the output of :func:`probe_script`; ``known`` supplies the status a fallback read-back left out."""
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for line in text.split("\n"):  # not splitlines(): a \r in a rule's comment is not a line break
        if line.startswith(PROBE_MARK):
            current = line[len(PROBE_MARK) :].strip()
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
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
