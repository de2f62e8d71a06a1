"""A real HTTP load balancer in the lab, standing in for the Hetzner load balancers: Debian's nginx.

It runs inside a lab host (its own network namespace on the lab bridge, 198.18.0.x), so nothing
listens in the root namespace. Like the Hetzner load balancers it terminates TLS for
platform.keybuzz.io and platform-api.keybuzz.io (with a test CA's certificate) and forwards both,
over plain HTTP with the Host header kept, to the workers' ingress NodePort. The upstream connect
timeout is short and a worker that does not answer is never taken out of rotation, so a NodePort
that UFW drops gives a 504 on every request, as in the outage.

    with lab_factory([HostSpec("lb-01", ufw_active=False, http_listener=False)]) as lb_lab, \\
            LoadBalancer(lb_lab.hosts[0], [h.ip for h in lab_hosts.hosts], tmp_path / "lb") as lb:
        lb.resolve_args()  # ["--resolve", "platform.keybuzz.io:443:198.18.0.40", ...]
"""

from __future__ import annotations

import contextlib
import ipaddress
import shlex
import shutil
import socket
import time
from collections.abc import Sequence
from pathlib import Path

from tests.lab.hosts import INGRESS_HOSTS, INGRESS_PORT, LAB_RANGE, LabError, LabHost
from tests.lab.testca import TestCA, make_test_ca

NGINX = "/usr/sbin/nginx"


class LoadBalancer:
    """nginx in ``host``: HTTP on 80 and HTTPS on 443 of the host's address, to ``backends``:``backend_port``.

    Args:
        host: the lab host it runs in (build it with ``ufw_active=False, http_listener=False``).
        backends: the workers' addresses.
        workdir: where its configuration, certificates and logs go.
        vhosts: the site names it serves (and its certificate holds); other names get 404.
        backend_port: the workers' port (the ingress-nginx HTTP NodePort).
        connect_timeout: seconds to wait for a worker to accept the connection.
        read_timeout: seconds to wait for a worker's answer.
        tries: workers tried per request before answering 504 (or 502).
    """

    def __init__(self, host: LabHost, backends: Sequence[str], workdir: Path, *,
                 vhosts: Sequence[str] = INGRESS_HOSTS, backend_port: int = INGRESS_PORT,
                 connect_timeout: float = 1.0, read_timeout: float = 5.0, tries: int = 2) -> None:
        if not backends:
            raise LabError("a load balancer needs at least one backend")
        if shutil.which(NGINX) is None:
            raise LabError("the lab load balancer needs nginx on this machine (apt-get install nginx-light)")
        self.host = host
        self.ip = host.ip
        self.backends = list(backends)
        self.vhosts = tuple(vhosts)
        self.dir = workdir
        (self.dir / "tmp").mkdir(parents=True, exist_ok=True)
        self.tls: TestCA = make_test_ca(self.dir / "tls", self.vhosts)
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(self._config(backend_port, connect_timeout, read_timeout, tries))
        self._running = False

    @property
    def ca_file(self) -> Path:
        """The CA that signed the load balancer's certificate (for ``--ca-file``)."""
        return self.tls.ca_file

    @property
    def access_log(self) -> Path:
        """One line per request: client, Host, status, the upstreams tried and their statuses."""
        return self.dir / "access.log"

    def resolve_args(self, port: int = 443) -> list[str]:
        """Return ``--resolve NAME:PORT:IP`` arguments that aim every site at this load balancer."""
        return [a for name in self.vhosts for a in ("--resolve", f"{name}:{port}:{self.ip}")]

    def requests(self) -> list[str]:
        """Return the access log's lines."""
        try:
            return self.access_log.read_text().splitlines()
        except FileNotFoundError:
            return []

    def start(self, timeout: float = 10.0) -> LoadBalancer:
        """Check the configuration, start nginx in the host and wait until both ports accept connections."""
        base = f"{NGINX} -e {shlex.quote(str(self.dir / 'error.log'))} -p {shlex.quote(str(self.dir))} " \
               f"-c {shlex.quote(str(self.conf))}"
        test = self.host.run(f"{base} -t 2>&1", check=False)
        if test.returncode != 0:
            raise LabError(f"nginx rejects {self.conf}:\n{test.stdout}")
        # nginx forks into the background (daemon on); none of our pipes may stay open in it.
        self.host.run(f"{base} </dev/null >/dev/null 2>&1")
        self._running = True
        deadline = time.monotonic() + timeout
        for port in (80, 443):
            while not _accepts(self.ip, port):
                if time.monotonic() > deadline:
                    self.close()
                    raise LabError(f"nginx does not listen on {self.ip}:{port} after {timeout}s:\n{self.error_log()}")
                time.sleep(0.05)
        return self

    def error_log(self) -> str:
        """Return the tail of nginx's error log."""
        try:
            return "\n".join((self.dir / "error.log").read_text(errors="replace").splitlines()[-20:])
        except FileNotFoundError:
            return "(no error log)"

    def close(self, timeout: float = 10.0) -> None:
        """Stop nginx (fast shutdown) and wait until its master is gone; idempotent."""
        if not self._running:
            return
        self._running = False
        pid_file = self.dir / "nginx.pid"
        with contextlib.suppress(FileNotFoundError, ValueError):
            pid = int(pid_file.read_text().strip())
            self.host.run(f"kill -TERM {pid}", check=False)
            deadline = time.monotonic() + timeout
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            if Path(f"/proc/{pid}").exists():
                self.host.run(f"kill -KILL {pid}", check=False)

    def __enter__(self) -> LoadBalancer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _config(self, backend_port: int, connect_timeout: float, read_timeout: float, tries: int) -> str:
        d = self.dir
        ms = lambda s: f"{int(s * 1000)}ms"  # noqa: E731
        servers = "".join(f"        server {b}:{backend_port} max_fails=0;\n" for b in self.backends)
        names = " ".join(self.vhosts)
        temp = "".join(f"    {kind}_temp_path {d / 'tmp' / kind};\n"
                       for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        return f"""# Lab load balancer (tests/lab/loadbalancer.py): TLS in front, HTTP to the workers' NodePort.
daemon on;
master_process on;
worker_processes 1;
user root;
pid {d / 'nginx.pid'};
error_log {d / 'error.log'} notice;
events {{ worker_connections 256; }}
http {{
{temp}    log_format lb '$remote_addr "$host" $scheme $status upstreams="$upstream_addr" '
                  'upstream_status="$upstream_status" time=$request_time';
    access_log {d / 'access.log'} lb;
    upstream workers_nodeport {{
{servers}    }}
    proxy_connect_timeout {ms(connect_timeout)};
    proxy_read_timeout {ms(read_timeout)};
    proxy_send_timeout {ms(read_timeout)};
    proxy_next_upstream error timeout;
    proxy_next_upstream_tries {tries};
    ssl_certificate {self.tls.cert_file};
    ssl_certificate_key {self.tls.key_file};
    server {{
        listen {self.ip}:80 default_server;
        listen {self.ip}:443 ssl default_server;
        return 404;
    }}
    server {{
        listen {self.ip}:80;
        listen {self.ip}:443 ssl;
        server_name {names};
        location / {{
            proxy_pass http://workers_nodeport;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
}}
"""


def _accepts(ip: str, port: int) -> bool:
    if ipaddress.ip_address(ip) not in LAB_RANGE:
        raise LabError(f"{ip} is outside the lab range {LAB_RANGE}")
    try:
        with socket.create_connection((ip, port), timeout=0.5):
            return True
    except OSError:
        return False
