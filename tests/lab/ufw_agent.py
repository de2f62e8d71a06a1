"""Inside a lab host, for the UFW differential test: listeners, and UFW's own loader of a rule set.

Run with the system python3 (it imports ufw's modules) inside the host's namespaces; it reads one
JSON request per line on stdin and answers one JSON line on stdout.

    python3 ufw_agent.py listen   # TCP 31695/32720 (accept, close) and UDP 8472 (echo), IPv4 + IPv6
    python3 ufw_agent.py target   # the same, plus "load", "clear-recent" and "tracked"

"load" makes UFW hold one rule set the way ``ufw`` itself would: /etc/default/ufw gets the asked
policies and IPV6, user.rules/user6.rules start from the packaged empty ones, and every rule goes
through ufw's own parser and ``UFWFrontend.do_action`` (so ufw decides which file, which order,
which iptables lines, and which rules it skips or rewrites). The kernel is then loaded without
ufw-init's 1.3 s of single iptables calls: the complete ruleset ufw-init built for the same
policies with no user rules is restored (captured once per policy set), then the user rules are
loaded as ufw's ``_reload_user_rules`` does when a rule changes (``ip[6]tables-restore -n`` of
user[6].rules; its flushing of the user logging chains is moot, the restore left them empty).
With ``check`` the real ``ufw-init force-reload`` (or ``force-stop``) runs afterwards and both
kernel states are compared, so the shortcut is itself under test.

"tracked" says which of some flows conntrack holds: netfilter confirms a flow's entry only when
its first packet is accepted (a DROP or REJECT discards it), so an attempt that saw no answer in
time but is tracked was let in, its answer late.
"""

from __future__ import annotations

import gettext
import ipaddress
import json
import os
import re
import selectors
import socket
import subprocess
import sys
import threading

TCP_PORTS = (31695, 32720)
UDP_PORTS = (8472,)
DEFAULTS = "/etc/default/ufw"
PRISTINE = "/usr/share/ufw/iptables"
RECENT = "/proc/net/xt_recent/DEFAULT"


def serve() -> None:
    """Accept every TCP connection (then close it) and echo every UDP datagram."""
    sel = selectors.DefaultSelector()
    for port in TCP_PORTS:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::", port))
        s.listen(4096)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, "tcp")
    for port in UDP_PORTS:
        u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        u.bind(("::", port))
        u.setblocking(False)
        sel.register(u, selectors.EVENT_READ, "udp")
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                if key.data == "tcp":
                    conn, _ = sock.accept()
                    conn.close()
                else:
                    data, addr = sock.recvfrom(2048)
                    sock.sendto(data, addr)
            except (BlockingIOError, ConnectionError):
                continue


def run(*argv: str, stdin: str | None = None) -> str:
    """Run a command; a failure is an error answer, not a crash."""
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}: {(result.stderr or result.stdout).strip()}")
    return result.stdout


def write_in_place(path: str, text: str) -> None:
    """Rewrite a file keeping its inode (some are bind mounts: no rename over them)."""
    with open(path, "r+") as f:
        f.seek(0)
        f.write(text)
        f.truncate()


def kernel_state() -> dict[str, list[str]]:
    """iptables-save and ip6tables-save of the filter table, without counters and comments, per chain."""
    out: dict[str, list[str]] = {}
    for exe in ("iptables-save", "ip6tables-save"):
        for line in run(exe, "-t", "filter").splitlines():
            if line.startswith(":"):
                out.setdefault(f"{exe} {line.split()[0][1:]}", []).insert(0, line.split()[1])
            elif line.startswith("-A "):
                out.setdefault(f"{exe} {line.split()[1]}", []).append(line)
    return out


class Loader:
    """Loads rule sets into this host's UFW (see the module docstring)."""

    def __init__(self) -> None:
        gettext.install("ufw")
        import ufw.common  # noqa: F401  (the system's ufw, not a dependency of the project)
        import ufw.frontend

        self.frontend = ufw.frontend
        self.template = open(DEFAULTS).read()
        self.base: dict[str, tuple[str, str]] = {}
        self.caps: dict | None = None

    def defaults(self, ipv6: bool, incoming: str, routed: str) -> str:
        text = self.template
        for key, value in (
            ("IPV6", "yes" if ipv6 else "no"),
            ("DEFAULT_INPUT_POLICY", f'"{incoming}"'),
            ("DEFAULT_FORWARD_POLICY", f'"{routed}"'),
        ):
            text = re.sub(rf"^{key}=.*$", f"{key}={value}", text, flags=re.M)
        return text

    def real(self, active: bool) -> None:
        run("/lib/ufw/ufw-init", "force-reload" if active else "force-stop")

    def load(self, req: dict) -> dict:
        active = req["active"]
        policy = {"allow": "ACCEPT", "deny": "DROP", "reject": "REJECT"}
        write_in_place(DEFAULTS, self.defaults(req["ipv6"], policy[req["incoming"]], policy[req["routed"]]))
        for name in ("user.rules", "user6.rules"):
            write_in_place(f"/etc/ufw/{name}", open(f"{PRISTINE}/{name}").read())
        key = f"{req['ipv6']} {req['incoming']} {req['routed']}" if active else "stopped"  # stopped: no policy
        if key not in self.base:
            self.real(active)
            self.base[key] = (run("iptables-save"), run("ip6tables-save"))
        messages = []
        fe = self.frontend.UFWFrontend(False)
        fe.backend.defaults["enabled"] = "no"  # ufw only writes its files; the kernel is loaded below
        if self.caps is not None:
            fe.backend.caps = self.caps  # initcaps' probe of the kernel: the same every time
        else:
            fe.backend.initcaps()
            self.caps = fe.backend.caps
        for argv in req["rules"]:
            try:
                pr = self.frontend.parse_command(["ufw", *argv])
                messages.append(fe.do_action(pr.action, pr.data.get("rule", ""), pr.data.get("iptype", ""), True))
            except (Exception, SystemExit) as e:  # ufw reports a bad rule by exiting
                messages.append(f"ERROR: {getattr(e, 'value', e)!s}")
        base4, base6 = self.base[key]
        run("iptables-restore", stdin=base4)
        run("ip6tables-restore", stdin=base6)
        if active:  # ufw's _reload_user_rules, but for flushing the user logging chains: the base left them empty
            run("iptables-restore", "-n", stdin=open("/etc/ufw/user.rules").read())
            if req["ipv6"]:
                run("ip6tables-restore", "-n", stdin=open("/etc/ufw/user6.rules").read())
        answer: dict = {"messages": messages}
        if req.get("check"):
            fast = kernel_state()
            self.real(active)
            slow = kernel_state()
            answer["check"] = (
                "same"
                if fast == slow
                else json.dumps(
                    {k: (fast.get(k), slow.get(k)) for k in sorted(set(fast) | set(slow)) if fast.get(k) != slow.get(k)}
                )
            )
        for family in ("ipv4", "ipv6"):
            run("conntrack", "-F", "-f", family)
        self.clear_recent()
        answer["files"] = {
            name: open(path).read()
            for name, path in (
                ("user.rules", "/etc/ufw/user.rules"),
                ("user6.rules", "/etc/ufw/user6.rules"),
                ("defaults", DEFAULTS),
            )
        }
        return answer

    @staticmethod
    def clear_recent() -> None:
        if os.path.exists(RECENT):
            with open(RECENT, "w") as f:
                f.write("/\n")  # xt_recent: "/" forgets every address of the list


def _key(flow: list) -> tuple:
    proto, src, sport, dst, dport = flow
    return (proto, ipaddress.ip_address(src), int(sport), ipaddress.ip_address(dst), int(dport))


def tracked() -> set[tuple]:
    """The original direction of every conntrack entry: (proto, src, sport, dst, dport)."""
    out = set()
    for family in ("ipv4", "ipv6"):
        for line in run("conntrack", "-L", "-f", family).splitlines():
            words = line.split()
            if len(words) < 3 or words[0] not in ("tcp", "udp"):
                continue
            fields: dict[str, str] = {}
            for w in words:
                k, _, v = w.partition("=")
                if v and k not in fields:
                    fields[k] = v
            try:
                out.add(
                    (
                        words[0],
                        ipaddress.ip_address(fields["src"]),
                        int(fields["sport"]),
                        ipaddress.ip_address(fields["dst"]),
                        int(fields["dport"]),
                    )
                )
            except (KeyError, ValueError):
                continue
    return out


def sysctls() -> None:
    """No ICMP rate limits in this namespace: a REJECT must answer every probe (only where per-namespace)."""
    for path, value in (
        ("/proc/sys/net/ipv4/icmp_ratelimit", "0"),
        ("/proc/sys/net/ipv4/icmp_msgs_per_sec", "100000"),
        ("/proc/sys/net/ipv4/icmp_msgs_burst", "100000"),
        ("/proc/sys/net/ipv6/icmp/ratelimit", "0"),
    ):
        if os.path.exists(path):
            with open(path, "w") as f:
                f.write(value)


def main() -> None:
    mode = sys.argv[1]
    sysctls()
    threading.Thread(target=serve, daemon=True).start()
    loader = Loader() if mode == "target" else None
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        try:
            if req["op"] == "load" and loader is not None:
                answer = loader.load(req)
            elif req["op"] == "clear-recent":
                Loader.clear_recent()
                answer = {}
            elif req["op"] == "tracked":
                held = tracked()
                answer = {"tracked": [f for f in req["flows"] if _key(f) in held]}
            else:
                answer = {"error": f"unknown op {req['op']!r}"}
        except Exception as e:  # an answer, so the test shows it with the rule set
            answer = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
