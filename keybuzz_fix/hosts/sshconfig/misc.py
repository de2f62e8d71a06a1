"""OpenSSH's string helpers (misc.c, match.c), kept to their behaviour: tokens, quotes, patterns, ports.

Every other module of the ssh_config model splits and matches through these, so that a line reads
as ``ssh`` reads it; no ssh_config file is read here.
"""

from __future__ import annotations

import re
import socket

from keybuzz_fix.errors import InputError

_WS = " \t\r\n"
_UPPER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def lower(text: str) -> str:
    """Lowercase ASCII letters only, as OpenSSH's ``lowercase()`` does."""
    return text.translate(_UPPER)


class SshConfigError(InputError):
    """An ssh_config line that OpenSSH refuses too (``path:line`` and the problem)."""


def _strdelim(s: str | None, split_equals: bool = True) -> tuple[str | None, str | None]:
    """Return the next token and the rest: split on whitespace or one ``=``; a ``"`` quotes."""
    if s is None:
        return None, None
    delims = _WS + '"' + ("=" if split_equals else "")
    pos = next((i for i, c in enumerate(s) if c in delims), None)
    if pos is None:
        return s, None
    if s[pos] == '"':
        s = s[:pos] + s[pos + 1 :]
        close = s.find('"', pos)
        if close < 0:
            return None, None
        after = close + 1
        while after < len(s) and s[after] in _WS:
            after += 1
        return s[:close], s[after:]
    equals = split_equals and s[pos] == "="
    token = s[:pos]
    j = pos + 1
    while j < len(s) and s[j] in _WS:
        j += 1
    if split_equals and j < len(s) and s[j] == "=" and not equals:
        j += 1
        while j < len(s) and s[j] in _WS:
            j += 1
    return token, s[j:]


def _argv_split(s: str) -> list[str] | None:
    """Split a line's arguments: quotes, ``\\`` escapes, a ``#`` starting a word ends the line (None: bad quotes)."""
    args: list[str] = []
    i, n = 0, len(s)
    while i < n:
        if s[i] in " \t":
            i += 1
            continue
        if s[i] == "#":
            break
        quote = ""
        arg: list[str] = []
        while i < n:
            c = s[i]
            nxt = s[i + 1] if i + 1 < n else ""
            if c == "\\":
                if nxt in ("'", '"', "\\") or (not quote and nxt == " "):
                    i += 1
                    arg.append(s[i])
                else:
                    arg.append(c)
            elif not quote and c in " \t":
                break
            elif not quote and c in "\"'":
                quote = c
            elif quote and c == quote:
                quote = ""
            else:
                arg.append(c)
            i += 1
        args.append("".join(arg))
        if i >= n:
            if quote:
                return None
            break
    return args


def match_pattern(s: str, pattern: str) -> bool:
    """Match ``*`` and ``?`` wildcards, case-sensitively (OpenSSH's match_pattern)."""
    return _pattern_regex(pattern).fullmatch(s) is not None


_REGEX_CACHE: dict[str, re.Pattern[str]] = {}


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    found = _REGEX_CACHE.get(pattern)
    if found is None:
        body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
        found = re.compile(body, re.DOTALL)
        if len(_REGEX_CACHE) < 4096:
            _REGEX_CACHE[pattern] = found
    return found


def match_pattern_list(s: str, patterns: str, dolower: bool) -> int:
    """Match a comma-separated pattern list: 1 a positive match, -1 a negated one, 0 none."""
    positive = 0
    for sub in patterns.split(","):
        negated = sub.startswith("!")
        if negated:
            sub = sub[1:]
        if len(sub) >= 1023:
            return 0
        if dolower:
            sub = lower(sub)
        if match_pattern(s, sub):
            if negated:
                return -1
            positive = 1
    return positive


def match_hostname(host: str, patterns: str) -> int:
    """Match a host name (lowercased) against a pattern list (lowercased)."""
    return match_pattern_list(lower(host), patterns, True)


def a2port(s: str) -> int:
    """Return a port number (0-65535) or a TCP service's port; -1 if neither."""
    if re.fullmatch(r"[ \t\n\v\f\r]*[+-]?[0-9]+", s):
        value = int(s)
        if 0 <= value <= 65535:
            return value
    try:
        return socket.getservbyname(s, "tcp")
    except (OSError, ValueError, UnicodeError):
        return -1


def _is_addr(name: str) -> bool:
    """Whether a host name is an address (ssh's is_addr: not lowercased, canonicalised as an address)."""
    if "%" in name or ":" in name or all(c in "0123456789." for c in name):
        return True
    try:
        found = socket.getaddrinfo(name, "22", 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST | socket.AI_NUMERICSERV)
    except (OSError, UnicodeError, ValueError):
        return False
    return len(found) == 1


def _canonical_address(name: str) -> str | None:
    """Return an address in its numeric form (``010.1`` is ``10.0.0.1``), or None for a name."""
    try:
        found = socket.getaddrinfo(name, "22", 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST | socket.AI_NUMERICSERV)
    except (OSError, UnicodeError, ValueError):
        return None
    if len(found) != 1:
        return None
    try:
        text, _ = socket.getnameinfo(found[0][4], socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)
    except (OSError, UnicodeError, ValueError):
        return None
    return text if lower(text) != lower(name) else name
