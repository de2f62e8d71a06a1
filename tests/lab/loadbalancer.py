"""A real HTTP load balancer in the lab, standing in for the Hetzner load balancers: Debian's nginx.

It runs inside a lab host (its own network namespace on the lab bridge, 198.18.0.x), so nothing
listens in the root namespace. Like the Hetzner load balancers it terminates TLS for
platform.keybuzz.io and platform-api.keybuzz.io (with a test CA's certificate) and forwards, with
the Host header kept, HTTP to the workers' ingress HTTP NodePort (31695) and HTTPS to their HTTPS
NodePort (32720, TLS again, not verified: the ingress holds its own certificate). The upstream
connect timeout is short and a worker that does not answer is never taken out of rotation, so a
NodePort that UFW drops gives a 504 on every request, as in the outage.

    with lab_factory([HostSpec("lb-01", ufw_active=False, http_listener=False)]) as lb_lab, \\
            LoadBalancer(lb_lab.hosts[0], [h.ip for h in lab_hosts.hosts], tmp_path / "lb") as lb:
        lb.resolve_args()  # ["--resolve", "platform.keybuzz.io:443:198.18.0.40", ...]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tests.lab.hosts import INGRESS_HOSTS, INGRESS_PORT, LabError, LabHost
from tests.lab.nginx import Nginx, main_block
from tests.lab.testca import TestCA, make_test_ca

INGRESS_TLS_PORT = 32720


class LoadBalancer:
    """nginx in ``host``: HTTP on 80 and HTTPS on 443 of the host's address, to the workers' NodePorts.

    Args:
        host: the lab host it runs in (build it with ``ufw_active=False, http_listener=False``).
        backends: the workers' addresses.
        workdir: where its configuration, certificates and logs go.
        vhosts: the site names it serves (and its certificate holds); other names get 404.
        backend_port: the workers' HTTP port (the ingress-nginx HTTP NodePort).
        tls_backend_port: the workers' HTTPS port (the ingress-nginx HTTPS NodePort) for requests that
            came in over HTTPS; None sends those to ``backend_port`` over HTTP too (for a lab whose
            workers only run the HTTP stand-in).
        connect_timeout: seconds to wait for a worker to accept the connection.
        read_timeout: seconds to wait for a worker's answer.
        tries: workers tried per request before answering 504 (or 502).
    """

    def __init__(
        self,
        host: LabHost,
        backends: Sequence[str],
        workdir: Path,
        *,
        vhosts: Sequence[str] = INGRESS_HOSTS,
        backend_port: int = INGRESS_PORT,
        tls_backend_port: int | None = None,
        connect_timeout: float = 1.0,
        read_timeout: float = 5.0,
        tries: int = 2,
    ) -> None:
        if not backends:
            raise LabError("a load balancer needs at least one backend")
        self.host = host
        self.ip = host.ip
        self.backends = list(backends)
        self.vhosts = tuple(vhosts)
        self.dir = workdir
        self.nginx = Nginx(host, workdir, ports=(80, 443))
        self.tls: TestCA = make_test_ca(self.dir / "tls", self.vhosts)
        self._text = self._config(backend_port, tls_backend_port, connect_timeout, read_timeout, tries)

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
        self.nginx.start(self._text, timeout)
        return self

    def error_log(self) -> str:
        """Return the tail of nginx's error log."""
        return self.nginx.error_log()

    def close(self, timeout: float = 10.0) -> None:
        """Stop nginx (fast shutdown) and wait until its master is gone; idempotent."""
        self.nginx.close(timeout)

    def __enter__(self) -> LoadBalancer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _config(
        self, backend_port: int, tls_backend_port: int | None, connect_timeout: float, read_timeout: float, tries: int
    ) -> str:
        d = self.dir
        ms = lambda s: f"{int(s * 1000)}ms"  # noqa: E731
        upstreams = ""
        for name, port in (("workers_http", backend_port), ("workers_https", tls_backend_port)):
            if port is not None:
                servers = "".join(f"        server {b}:{port} max_fails=0;\n" for b in self.backends)
                upstreams += f"    upstream {name} {{\n{servers}    }}\n"
        https = "https://workers_https" if tls_backend_port is not None else "http://workers_http"
        names = " ".join(self.vhosts)
        top = main_block(d, worker_connections=256)
        return f"""# Lab load balancer (tests/lab/loadbalancer.py): TLS in front, the workers' NodePorts behind.
{top}    log_format lb '$remote_addr "$host" $scheme $status upstreams="$upstream_addr" '
                  'upstream_status="$upstream_status" time=$request_time';
    access_log {d / "access.log"} lb;
{upstreams}    proxy_connect_timeout {ms(connect_timeout)};
    proxy_read_timeout {ms(read_timeout)};
    proxy_send_timeout {ms(read_timeout)};
    proxy_next_upstream error timeout;
    proxy_next_upstream_tries {tries};
    proxy_ssl_server_name on;
    proxy_ssl_name $host;
    ssl_certificate {self.tls.cert_file};
    ssl_certificate_key {self.tls.key_file};
    map $scheme $backend {{
        http http://workers_http;
        https {https};
    }}
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
            proxy_pass $backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
}}
"""
