"""Parsing and checking of option values: durations, percentages, UFW port specs and sources.

Pure functions of the value given on the command line, each raising a one-line
:class:`~keybuzz_fix.errors.UsageError` that names the option; the commands call them before
anything connects.
"""

import math
import re
from collections.abc import Mapping, Sequence

from keybuzz_fix.errors import UsageError
from keybuzz_fix.inventory import plain_network


def seconds(option: str, value: float) -> float:
    """Check a duration option: a finite number of seconds, more than 0 (nan and inf would never time out)."""
    if not math.isfinite(value):
        raise UsageError(f"{option} must be a number of seconds, got {value:g}")
    if value <= 0:
        raise UsageError(f"{option} must be more than 0 seconds, got {value:g}")
    return value


def percent(option: str, value: int | None) -> int | None:
    """Check a percentage option (``--threshold``)."""
    if value is not None and not 0 <= value <= 100:
        raise UsageError(f"{option} must be between 0 and 100 (percent), got {value}")
    return value


def parse_ports(spec: str) -> list[tuple[int, str]]:
    """Parse a ``--ports`` value such as ``31695/tcp,32720/tcp``."""
    out: list[tuple[int, str]] = []
    for part in spec.split(","):
        part = part.strip()
        number, _, proto = part.partition("/")
        proto = proto or "tcp"
        if not (number.isascii() and number.isdigit()) or not 1 <= int(number) <= 65535:
            raise UsageError(f"--ports: {part!r} is not a port number (1–65535), e.g. 31695/tcp")
        if proto not in ("tcp", "udp"):
            raise UsageError(f"--ports: {part!r}: protocol must be tcp or udp")
        if int(number) == 22:
            raise UsageError("--ports: 22 is SSH; the tool never manages the SSH rule through --ports")
        out.append((int(number), proto))
    if len(set(out)) != len(out):
        raise UsageError(f"--ports: {spec!r} lists a port twice")
    return out


def parse_source(value: str) -> str:
    """Check a ``--source`` value: a CIDR, a single address, or the explicit ``any``."""
    if value == "any":
        return value
    try:
        net = plain_network(value, strict=False)
    except ValueError:
        raise UsageError(f"--source: {value!r} is not a network such as 10.0.0.0/16 (or 'any')") from None
    if str(net.network_address) != value.split("/")[0]:
        raise UsageError(f"--source: {value!r} has host bits set; did you mean {net}?")
    return str(net) if "/" in value else str(net.network_address)


ENV_PREFIX = "KEYBUZZ_FIX_"  # KEYBUZZ_FIX_<LONG_OPTION> sets an option's default (see option_defaults)
_OPTION = re.compile(r"--[a-z][a-z0-9-]*")


def from_environment(message: str, argv: Sequence[str], environ: Mapping[str, str]) -> str:
    """Name the variable behind a bad option value: the error names ``--timeout``, the line never gave it.

    ``KEYBUZZ_FIX_TIMEOUT=abc`` fails as ``--timeout``; the operator looking at the command line
    would not see where it came from.
    """
    given = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    for option in dict.fromkeys(_OPTION.findall(message)):
        variable = ENV_PREFIX + option[2:].upper().replace("-", "_")
        if option not in given and environ.get(variable):
            return f"{message} (set by {variable} in the environment)"
    return message
