"""The ingress stand-in's configuration: what ingress-nginx would serve, rendered for Debian's nginx (pure).

ingress-nginx turns the Ingresses of its class into one nginx configuration: a server per host, a
location per path, and for each backend the **endpoints** of its Service (EndpointSlices, ready ones
only; not the ClusterIP). This module does the same from plain API objects (camelCase dicts), so
the lab's workers proxy to the app pods where the cluster says they are — on every worker, as the
real controller does. Per Ingress it applies the annotations that change the data path, with
ingress-nginx's defaults where they are absent:

| annotation (nginx.ingress.kubernetes.io/…) | default | nginx directive |
| --- | --- | --- |
| proxy-connect-timeout | 5 (s) | proxy_connect_timeout |
| proxy-read-timeout / proxy-send-timeout | 60 (s) | proxy_read_timeout / proxy_send_timeout |
| proxy-next-upstream | error timeout | proxy_next_upstream |
| proxy-next-upstream-tries | 3 | proxy_next_upstream_tries |
| proxy-body-size | 1m | client_max_body_size |

(Source: ingress-nginx's docs, "Annotations" and "ConfigMap" pages.) An unknown host gets the
default backend's 404, a route whose Service has no ready endpoint a 503. Which Ingress is served
follows the controller's flags in the lab's seed: class ``nginx`` by ``spec.ingressClassName`` or
the ``kubernetes.io/ingress.class`` annotation, and Ingresses without a class
(``--watch-ingress-without-class=true``); for one host and path the oldest Ingress wins, as
ingress-nginx does without its admission webhook (kubernetes/ingress-nginx#5651).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Obj = dict[str, Any]
PREFIX = "nginx.ingress.kubernetes.io/"
DEFAULTS = {
    "proxy-connect-timeout": "5",
    "proxy-read-timeout": "60",
    "proxy-send-timeout": "60",
    "proxy-next-upstream": "error timeout",
    "proxy-next-upstream-tries": "3",
    "proxy-body-size": "1m",
}
_NEXT_UPSTREAM = {
    "error",
    "timeout",
    "invalid_header",
    "http_500",
    "http_502",
    "http_503",
    "http_504",
    "http_403",
    "http_404",
    "http_429",
    "non_idempotent",
    "off",
}


@dataclass(frozen=True)
class Route:
    """One served host and path, the Ingress it came from, and where its requests go."""

    host: str
    path: str
    exact: bool
    ingress: str  # namespace/name
    service: str  # namespace/name:port
    endpoints: tuple[str, ...]  # "ip:port", ready endpoints only
    settings: Mapping[str, str] = field(default_factory=dict)


def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def _key(obj: Obj) -> str:
    return f"{_meta(obj).get('namespace', '')}/{_meta(obj).get('name', '')}"


def served(ingress: Obj, classes: Mapping[str, str], *, class_name: str, controller: str, without_class: bool) -> bool:
    """Whether the controller (``controller``, ``--ingress-class=class_name``) serves this Ingress."""
    annotated = (_meta(ingress).get("annotations") or {}).get("kubernetes.io/ingress.class")
    if annotated is not None:
        return bool(annotated == class_name)
    spec_class = (ingress.get("spec") or {}).get("ingressClassName")
    if spec_class is None:
        return without_class
    return spec_class == class_name and classes.get(spec_class) == controller


def _endpoints(namespace: str, service: Obj | None, port: Obj, slices: Iterable[Obj]) -> tuple[str, ...]:
    """Ready endpoints ("ip:port") of ``service`` for its port ``port`` (a backend's ``service.port``)."""
    if service is None:
        return ()
    wanted = None
    for p in (service.get("spec") or {}).get("ports") or []:
        if ("number" in port and p.get("port") == port["number"]) or ("name" in port and p.get("name") == port["name"]):
            wanted = p
            break
    if wanted is None:
        return ()
    name = _meta(service).get("name")
    out: list[str] = []
    for s in slices:
        meta = _meta(s)
        if meta.get("namespace") != namespace or (meta.get("labels") or {}).get("kubernetes.io/service-name") != name:
            continue
        if s.get("addressType") not in (None, "IPv4"):
            continue
        number = next(
            (p.get("port") for p in s.get("ports") or [] if (p.get("name") or "") == (wanted.get("name") or "")), None
        )
        if number is None:
            continue
        for ep in s.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready") is False:
                continue
            out += [f"{a}:{number}" for a in ep.get("addresses") or []]
    return tuple(sorted(set(out)))


def routes(
    ingresses: Sequence[Obj],
    services: Sequence[Obj],
    slices: Sequence[Obj],
    classes: Sequence[Obj],
    *,
    class_name: str = "nginx",
    controller: str = "k8s.io/ingress-nginx",
    without_class: bool = True,
) -> list[Route]:
    """Return the routes ingress-nginx would serve, oldest Ingress first for each host and path."""
    by_class = {_meta(c).get("name", ""): (c.get("spec") or {}).get("controller", "") for c in classes}
    svc = {_key(s): s for s in services}
    taken: dict[tuple[str, str, bool], Route] = {}
    ordered = sorted(ingresses, key=lambda i: (_meta(i).get("creationTimestamp") or "", _key(i)))
    for ing in ordered:
        if not served(ing, by_class, class_name=class_name, controller=controller, without_class=without_class):
            continue
        ns = _meta(ing).get("namespace", "")
        notes = _meta(ing).get("annotations") or {}
        settings = {k: str(notes.get(PREFIX + k, v)) for k, v in DEFAULTS.items()}
        for rule in (ing.get("spec") or {}).get("rules") or []:
            host = (rule.get("host") or "").lower()
            for p in ((rule.get("http") or {}).get("paths")) or []:
                backend = (p.get("backend") or {}).get("service") or {}
                port = backend.get("port") or {}
                exact = p.get("pathType") == "Exact"
                key = (host, p.get("path") or "/", exact)
                if key in taken:
                    continue
                target = f"{ns}/{backend.get('name', '')}"
                shown = f"{target}:{port.get('number', port.get('name', ''))}"
                taken[key] = Route(
                    host, key[1], exact, _key(ing), shown, _endpoints(ns, svc.get(target), port, slices), settings
                )
    return list(taken.values())


def _seconds(value: str, default: str) -> str:
    return f"{int(value)}s" if value.isdigit() else f"{default}s"


def _location(route: Route, upstream: str) -> str:
    s = route.settings
    nxt = " ".join(w for w in s["proxy-next-upstream"].split() if w in _NEXT_UPSTREAM) or "error timeout"
    tries = s["proxy-next-upstream-tries"] if s["proxy-next-upstream-tries"].isdigit() else "3"
    where = f"= {route.path}" if route.exact else route.path
    connect, read, send = (
        _seconds(s[f"proxy-{k}-timeout"], DEFAULTS[f"proxy-{k}-timeout"]) for k in ("connect", "read", "send")
    )
    if not route.endpoints:
        return f"        location {where} {{ return 503; }}\n"
    return (
        f"        location {where} {{\n"
        f"            # {route.ingress} -> {route.service}\n"
        f"            proxy_pass http://{upstream};\n"
        f"            proxy_connect_timeout {connect};\n"
        f"            proxy_read_timeout {read};\n"
        f"            proxy_send_timeout {send};\n"
        f"            proxy_next_upstream {nxt};\n"
        f"            proxy_next_upstream_tries {tries};\n"
        f"            client_max_body_size {s['proxy-body-size']};\n"
        "            proxy_http_version 1.1;\n"
        '            proxy_set_header Connection "";\n'
        "            proxy_set_header Host $host;\n"
        "            proxy_set_header X-Forwarded-For $remote_addr;\n"
        "        }\n"
    )


def render(
    served_routes: Sequence[Route],
    *,
    main: str,
    workdir: Path,
    cert: Path,
    key: Path,
    http_port: int = 80,
    https_port: int = 443,
) -> str:
    """Return the nginx.conf of one worker's ingress stand-in for ``served_routes`` (``main``: the top block)."""
    upstreams, servers = "", ""
    hosts: dict[str, list[str]] = {}
    for i, r in enumerate(served_routes):
        name = f"route{i}"
        if r.endpoints:
            members = "".join(f"        server {e} max_fails=0;\n" for e in r.endpoints)
            upstreams += f"    upstream {name} {{\n{members}    }}\n"
        hosts.setdefault(r.host, []).append(_location(r, name))
    catch_all = "".join(hosts.pop("", [])) or "        return 404;\n"  # rules without a host: every name
    for host, locations in hosts.items():
        servers += (
            f"    server {{\n        listen {http_port};\n        listen {https_port} ssl;\n"
            f"        server_name {host};\n{''.join(locations)}    }}\n"
        )
    return (
        f"# Ingress stand-in (tests/lab/ingress_standin.py): what ingress-nginx would serve.\n{main}"
        '    log_format ingress \'$remote_addr "$host" $status upstream="$upstream_addr" \'\n'
        "                       'upstream_status=\"$upstream_status\" time=$request_time';\n"
        f"    access_log {workdir / 'access.log'} ingress;\n"
        f"    ssl_certificate {cert};\n    ssl_certificate_key {key};\n{upstreams}"
        f"    server {{\n        listen {http_port} default_server;\n"
        f"        listen {https_port} ssl default_server;\n{catch_all}    }}\n"
        f"{servers}}}\n"
    )
