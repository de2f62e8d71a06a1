"""Debian's nginx run inside a lab host: the load balancer and the ingress stand-in both use it.

    server = Nginx(host, workdir, ports=(80, 443))
    server.start(config_text)     # nginx -t, then start; waits until every port accepts connections
    server.reload(new_text)       # nginx -t, then SIGHUP: the master re-reads it, old workers drain
    server.close()

The configuration is checked with ``nginx -t`` before it replaces the running one, so a bad
configuration is a LabError naming nginx's complaint, never a silently dead server.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shlex
import shutil
import signal
import socket
import time
from collections.abc import Sequence
from pathlib import Path

from tests.lab.hosts import LAB_RANGE, LabError, LabHost

NGINX = "/usr/sbin/nginx"
TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def main_block(workdir: Path, *, worker_connections: int = 512) -> str:
    """Return the top of an nginx.conf (process, pid, logs, temp paths) for a server kept in ``workdir``."""
    temp = "".join(f"    {kind}_temp_path {workdir / 'tmp' / kind};\n" for kind in TEMP_KINDS)
    return (
        f"daemon on;\nmaster_process on;\nworker_processes 1;\nuser root;\npid {workdir / 'nginx.pid'};\n"
        f"error_log {workdir / 'error.log'} notice;\nevents {{ worker_connections {worker_connections}; }}\n"
        f"http {{\n{temp}"
    )


class Nginx:
    """One nginx master in a lab host, its files in ``workdir``, listening on ``ports``."""

    def __init__(self, host: LabHost, workdir: Path, *, ports: Sequence[int] = (80, 443)) -> None:
        if shutil.which(NGINX) is None:
            raise LabError("lab nginx needs nginx on this machine (apt-get install nginx-light)")
        self.host = host
        self.dir = workdir
        self.ports = tuple(ports)
        (self.dir / "tmp").mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "nginx.conf"
        self._pid: int | None = None

    def _base(self, conf: Path) -> str:
        return (
            f"{NGINX} -e {shlex.quote(str(self.dir / 'error.log'))} -p {shlex.quote(str(self.dir))} "
            f"-c {shlex.quote(str(conf))}"
        )

    def _checked(self, text: str) -> None:
        """Write ``text`` as the configuration if ``nginx -t`` accepts it; else a LabError."""
        candidate = self.conf.with_suffix(".new")
        candidate.write_text(text)
        test = self.host.run(f"{self._base(candidate)} -t 2>&1", check=False)
        if test.returncode != 0:
            raise LabError(f"nginx rejects {candidate}:\n{test.stdout}")
        os.replace(candidate, self.conf)

    @property
    def running(self) -> bool:
        """Whether the master process is alive."""
        return self._pid is not None and Path(f"/proc/{self._pid}").exists()

    def start(self, text: str, timeout: float = 10.0) -> Nginx:
        """Check and write the configuration, start nginx and wait until every port accepts connections."""
        self._checked(text)
        # nginx forks into the background (daemon on); none of our pipes may stay open in it.
        self.host.run(f"{self._base(self.conf)} </dev/null >/dev/null 2>&1")
        deadline = time.monotonic() + timeout
        while self._pid is None:
            with contextlib.suppress(FileNotFoundError, ValueError):
                self._pid = int((self.dir / "nginx.pid").read_text().strip())
            if self._pid is None:
                if time.monotonic() > deadline:
                    raise LabError(f"nginx wrote no pid file in {timeout}s:\n{self.error_log()}")
                time.sleep(0.02)
        for port in self.ports:
            while not self.listening(port):
                if time.monotonic() > deadline:
                    self.close()
                    raise LabError(
                        f"nginx does not listen on {self.host.name}:{port} after {timeout}s:\n{self.error_log()}"
                    )
                time.sleep(0.05)
        return self

    def listening(self, port: int) -> bool:
        """Whether a socket listens on ``port`` inside the host (asked there: UFW may drop us outside)."""
        return bool(self.host.run(f"ss -Hltn 'sport = :{port}'", check=False).stdout.strip())

    def reload(self, text: str) -> None:
        """Check and write a new configuration, then tell the master to load it (SIGHUP)."""
        self._checked(text)
        if self._pid is None:
            raise LabError(f"{self.host.name}: nginx is not running")
        os.kill(self._pid, signal.SIGHUP)

    def error_log(self) -> str:
        """Return the tail of nginx's error log."""
        try:
            return "\n".join((self.dir / "error.log").read_text(errors="replace").splitlines()[-20:])
        except FileNotFoundError:
            return "(no error log)"

    def close(self, timeout: float = 10.0) -> None:
        """Stop nginx (fast shutdown) and wait until its master is gone; idempotent."""
        pid, self._pid = self._pid, None
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Whether a process runs; an exited one that its parent has not reaped (a zombie) does not."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def accepts(ip: str, port: int, timeout: float = 0.5) -> bool:
    """Whether a TCP connection from the root namespace to a lab address opens."""
    if ipaddress.ip_address(ip) not in LAB_RANGE:
        raise LabError(f"{ip} is outside the lab range {LAB_RANGE}")
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True
    except OSError:
        return False
