"""Reading the command's servers.tsv: the one place the CLI turns the file into the hosts a flow works on.

A file that was not UTF-8 (Excel's Windows-1252 export) is read, and a note on stderr says so.
"""

from pathlib import Path

from keybuzz_fix.inventory import FALLBACK_ENCODING, Host, Inventory, Role, limit, read_inventory, select, with_user
from keybuzz_fix.report.output import note_line


def inventory_of(servers: Path) -> Inventory:
    """Read servers.tsv, saying on stderr when it was not UTF-8."""
    inv = read_inventory(servers)
    if inv.encoding == FALLBACK_ENCODING:
        note_line(f"{servers}: not UTF-8, read as Windows-1252 (cp1252); save it as UTF-8 to silence this note")
    return inv


def nodes(servers: Path, role: Role, env: str, user: str | None = None, hosts: str | None = None) -> list[Host]:
    """Return the K3s nodes of ``role`` in ``env`` from the command's servers.tsv: ``--limit``, ``--user`` applied."""
    return with_user(limit(select(inventory_of(servers), role, env), hosts), user)
