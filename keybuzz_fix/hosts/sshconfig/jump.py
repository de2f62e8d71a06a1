"""ProxyJump values as OpenSSH parses them (parse_jump, parse_user_host_port, parse_ssh_uri, hpdelim2).

``[user@]host[:port]`` and ``ssh://[user@]host[:port]`` hops, comma-separated; every hop's syntax
is checked even where the value is not the one obtained, as ``ssh`` does.
"""

from __future__ import annotations

from keybuzz_fix.hosts.sshconfig.hops import _Options
from keybuzz_fix.hosts.sshconfig.misc import _WS, a2port, lower


def _parse_jump(value: str, opts: _Options, active: bool, where: str) -> bool:
    """OpenSSH's parse_jump: check every hop's syntax; the first ProxyJump (or ProxyCommand) obtained wins."""
    if lower(value) == "none":
        if active and opts.jump_host is None:
            opts.jump_host, opts.jump_port = "none", 0
            opts.origins.setdefault("proxyjump", where)
        return True
    text = value.split("#", 1)[0].rstrip(_WS)
    active = active and opts.proxy_command is None and opts.jump_host is None
    parsed: tuple[str | None, str, int] | None = None
    for element in reversed(text.split(",")):
        hop = _parse_hop(element)
        if hop is None:
            return False
        parsed = parsed or hop
    if active and parsed is not None:
        opts.jump_user, opts.jump_host, opts.jump_port = parsed
        opts.proxy_command = "none"
        cut = text.rfind(",")
        if cut >= 0:
            opts.jump_extra = text[:cut]
        opts.origins.setdefault("proxyjump", where)
    return True


def _parse_hop(text: str) -> tuple[str | None, str, int] | None:
    """Parse ``[user@]host[:port]`` or ``ssh://[user@]host[:port]``: (user, host, port or -1), None if invalid."""
    if text.startswith("ssh://"):
        return _parse_ssh_uri(text[len("ssh://") :])
    user = None
    at = text.rfind("@")
    if at >= 0:
        if at == 0:
            return None
        user, text = text[:at], text[at + 1 :]
    host, delim, rest = _hpdelim(text)
    if host is None or host == "" or delim == "/":
        return None
    host = _clean_host(host)
    port = -1
    if rest:
        port = a2port(rest)
        if port <= 0:
            return None
    return user, host, port


def _parse_ssh_uri(text: str) -> tuple[str | None, str, int] | None:
    user = None
    at = text.find("@")
    if at >= 0:
        user = text[:at].split(";", 1)[0]
        if user == "":
            return None
        user = _urldecode(user)
        if user is None:
            return None
        text = text[at + 1 :]
    host, delim, rest = _hpdelim(text)
    if host is None or host == "":
        return None
    host = _clean_host(host)
    if not _valid_domain(host):
        return None
    if host.endswith("."):
        host = host[:-1]
    port = -1
    if rest:
        if delim == ":":
            rest, slash, path = rest.partition("/")
            port = a2port(rest)
            if port <= 0:
                return None
            rest = path if slash else ""
        if rest:
            return None  # a path is not allowed
    return user, host, port


def _hpdelim(text: str) -> tuple[str | None, str, str]:
    """Split ``host[:rest]`` or ``[v6]:rest`` (OpenSSH's hpdelim2): (host, the delimiter, the rest)."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None, "", ""
        pos = end + 1
    else:
        found = [i for i in (text.find(":"), text.find("/")) if i >= 0]
        pos = min(found) if found else len(text)
    if pos >= len(text):
        return text, "", ""
    if text[pos] not in ":/":
        return None, "", ""
    return text[:pos], text[pos], text[pos + 1 :]


def _clean_host(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") and len(host) >= 2 else host


def _valid_domain(name: str) -> bool:
    if not name or not (name[0].isascii() and name[0].isalnum()):
        return False
    last = ""
    for c in lower(name):
        if last == "." and c == ".":
            return False
        if c not in ".-_" and not (c.isascii() and c.isalnum()):
            return False
        last = c
    return True


def _urldecode(text: str) -> str | None:
    out = bytearray()
    i = 0
    raw = text.encode("utf-8", "surrogateescape")
    while i < len(raw):
        c = raw[i]
        if c == ord("+"):
            out.append(ord(" "))
        elif c == ord("%"):
            pair = raw[i + 1 : i + 3]
            if len(pair) != 2 or not all(chr(b) in "0123456789abcdefABCDEF" for b in pair):
                return None
            out.append(int(pair, 16))
            i += 2
        else:
            out.append(c)
        i += 1
    return out.decode("utf-8", "surrogateescape")
