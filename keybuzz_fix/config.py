"""Names, ports and routes the tool works with: shipped defaults, overridable by ``--config``.

The defaults live in ``manifests/defaults.yaml`` so that no name or port is a literal scattered in
code. A config file has the same layout; its mappings merge into the defaults and its lists
replace them. Everything is checked (unknown keys, types, port ranges, collisions) before any
command runs, and errors name the file and the key.
"""

from __future__ import annotations

import types
import typing
import unicodedata
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from keybuzz_fix.errors import ConfigError, read_input
from keybuzz_fix.inventory import plain_network

NODE_PORT_RANGE = (30000, 32767)
DataclassT = TypeVar("DataclassT")


@dataclass(frozen=True)
class AppConfig:
    """One Deployment to turn into a hostNetwork DaemonSet."""

    name: str
    host_port: int
    node_port: int
    service_port: int = 80
    port_env: str = "PORT"


@dataclass(frozen=True)
class PortRule:
    """One port the ``ufw`` command opens when the cluster cannot be read: its UFW comment and why it is needed."""

    port: int
    proto: str = "tcp"
    comment: str = ""
    purpose: str = ""


@dataclass(frozen=True)
class FirewallConfig:
    """From where ``ufw`` opens the workers, and the ports it opens when the cluster cannot tell it which."""

    source: str
    ports: tuple[PortRule, ...]


@dataclass(frozen=True)
class OverlayConfig:
    """What ``overlay`` opens on every K3s node for Flannel's VXLAN."""

    source: str
    vxlan_port: int
    pod_cidr: str
    service_cidr: str


@dataclass(frozen=True)
class Route:
    """One Ingress: a host name routed to a Service."""

    name: str
    host: str
    service: str
    port: int = 80


@dataclass(frozen=True)
class IngressConfig:
    """Where ingress-nginx runs and the routes to apply."""

    namespace: str
    controller: str
    service: str
    http_node_port: int
    https_node_port: int
    class_name: str
    reserved_host_ports: tuple[int, ...]
    routes: tuple[Route, ...]
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ValidateConfig:
    """The scorecard's URLs and pass threshold (percent)."""

    urls: tuple[str, ...]
    threshold: int = 80


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    namespace: str
    apps: tuple[AppConfig, ...]
    firewall: FirewallConfig
    overlay: OverlayConfig
    ingress: IngressConfig
    validate: ValidateConfig

    def app(self, name: str) -> AppConfig:
        """Return the app named ``name``."""
        for a in self.apps:
            if a.name == name:
                return a
        raise KeyError(name)


def sets_namespace(path: Path | str | None) -> bool:
    """Whether a ``--config`` file names the apps' namespace itself (it then wins over the kubeconfig context's)."""
    if path is None:
        return False
    data = _read_yaml(Path(path))
    return isinstance(data, dict) and "namespace" in data


def manifests_dir() -> Path:
    """Return the shipped ``manifests/`` folder (inside the wheel, or the source tree)."""
    packaged = Path(__file__).parent / "manifests"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "manifests"


def load_config(path: Path | str | None = None) -> Config:
    """Return the defaults, with ``path`` (a ``--config`` file) merged over them."""
    data = _defaults()
    source = "manifests/defaults.yaml"
    if path is not None:
        source = str(path)
        override = _read_yaml(Path(path))
        if override is None:
            override = {}
        if not isinstance(override, dict):
            raise ConfigError(source, f"expected a mapping at the top level, found {_kind(override)}")
        data = _merge(data, override)
    cfg = _build(Config, data, source, "")
    _check(cfg, source)
    return cfg


@cache
def _defaults_text() -> str:
    return (manifests_dir() / "defaults.yaml").read_text(encoding="utf-8")


def _defaults() -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(_defaults_text())
    assert isinstance(data, dict)
    return data


def _read_yaml(path: Path) -> Any:
    import yaml

    text = read_input(path, ConfigError)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(str(path), f"not valid YAML: {problem}", line) from None


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _kind(v: Any) -> str:
    return {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "nothing",
    }.get(type(v), type(v).__name__)


def _build(cls: type[DataclassT], data: Any, source: str, where: str) -> DataclassT:
    """Build dataclass ``cls`` from plain data, checking keys and types."""
    if not isinstance(data, dict):
        raise ConfigError(source, f"{where or 'top level'}: expected a mapping, found {_kind(data)}")
    assert is_dataclass(cls)
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(map(str, data)) - known)
    if unknown:
        raise ConfigError(
            source,
            f"{where + ': ' if where else ''}unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}",
        )
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        key = f"{where}.{f.name}" if where else f.name
        if f.name not in data:
            if f.default is not MISSING or f.default_factory is not MISSING:
                continue
            raise ConfigError(source, f"{key}: missing")
        kwargs[f.name] = _value(hints[f.name], data[f.name], source, key)
    return cls(**kwargs)


def _value(tp: Any, v: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    if is_dataclass(tp):
        return _build(typing.cast(type[Any], tp), v, source, key)
    if origin is tuple:
        (item,) = typing.get_args(tp)[:1]
        if not isinstance(v, list):
            raise ConfigError(source, f"{key}: expected a list, found {_kind(v)}")
        return tuple(_value(item, x, source, f"{key}[{i}]") for i, x in enumerate(v))
    if origin is dict:
        if not isinstance(v, dict):
            raise ConfigError(source, f"{key}: expected a mapping, found {_kind(v)}")
        return {str(k): _value(str, x, source, f"{key}.{k}") for k, x in v.items()}
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(source, f"{key}: expected a whole number, found {_kind(v)} {v!r}")
        return v
    if tp is str:
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise ConfigError(source, f"{key}: expected a string, found {_kind(v)}")
        return str(v)
    if isinstance(tp, types.UnionType):  # pragma: no cover - no optional fields yet
        return v
    raise AssertionError(f"unsupported config type {tp!r}")


def _check(cfg: Config, source: str) -> None:
    def port(v: int, key: str, low: int = 1, high: int = 65535) -> None:
        if not low <= v <= high:
            raise ConfigError(source, f"{key}: {v} is outside {low}–{high}")

    def cidr(v: str, key: str) -> None:
        if v == "any":
            return
        try:
            plain_network(v, strict=True)
        except ValueError:
            raise ConfigError(source, f"{key}: {v!r} is not a network in CIDR form (e.g. 10.0.0.0/16)") from None

    if not cfg.apps:
        raise ConfigError(source, "apps: at least one app is needed")
    host_ports: dict[int, str] = {p: "ingress-nginx" for p in cfg.ingress.reserved_host_ports}
    node_ports: dict[int, str] = {
        cfg.ingress.http_node_port: "ingress.http_node_port",
        cfg.ingress.https_node_port: "ingress.https_node_port",
    }
    names: set[str] = set()
    for i, app in enumerate(cfg.apps):
        key = f"apps[{i}]"
        if app.name in names:
            raise ConfigError(source, f"{key}.name: {app.name!r} is listed twice")
        names.add(app.name)
        port(app.host_port, f"{key}.host_port")
        port(app.service_port, f"{key}.service_port")
        port(app.node_port, f"{key}.node_port", *NODE_PORT_RANGE)
        if app.host_port in host_ports:
            raise ConfigError(
                source, f"{key}.host_port: {app.host_port} is already used by {host_ports[app.host_port]}"
            )
        host_ports[app.host_port] = app.name
        if app.node_port in node_ports:
            raise ConfigError(
                source, f"{key}.node_port: {app.node_port} is already used by {node_ports[app.node_port]}"
            )
        node_ports[app.node_port] = app.name
    port(cfg.ingress.http_node_port, "ingress.http_node_port", *NODE_PORT_RANGE)
    port(cfg.ingress.https_node_port, "ingress.https_node_port", *NODE_PORT_RANGE)
    if cfg.ingress.http_node_port == cfg.ingress.https_node_port:
        raise ConfigError(source, "ingress: http_node_port and https_node_port are the same")
    for i, hp in enumerate(cfg.ingress.reserved_host_ports):
        port(hp, f"ingress.reserved_host_ports[{i}]")
    if not cfg.firewall.ports:
        raise ConfigError(source, "firewall.ports: at least one port is needed")
    seen: set[tuple[int, str]] = set()
    for i, rule in enumerate(cfg.firewall.ports):
        port(rule.port, f"firewall.ports[{i}].port")
        if rule.port == 22:
            raise ConfigError(
                source,
                f"firewall.ports[{i}].port: 22 is SSH; the tool never manages the SSH rule through firewall.ports",
            )
        if rule.proto not in ("tcp", "udp"):
            raise ConfigError(source, f"firewall.ports[{i}].proto: {rule.proto!r} is not tcp or udp")
        if (rule.port, rule.proto) in seen:
            raise ConfigError(source, f"firewall.ports[{i}]: {rule.port}/{rule.proto} is listed twice")
        seen.add((rule.port, rule.proto))
        _check_comment(rule.comment, f"firewall.ports[{i}].comment", source)
    cidr(cfg.firewall.source, "firewall.source")
    for key in ("source", "pod_cidr", "service_cidr"):
        value = getattr(cfg.overlay, key)
        if value == "any":
            raise ConfigError(
                source,
                f"overlay.{key} is 'any': that would let anyone reach the pod network (VXLAN "
                "packets are not authenticated); set it to a network in CIDR form",
            )
        cidr(value, f"overlay.{key}")
    port(cfg.overlay.vxlan_port, "overlay.vxlan_port")
    if not 0 <= cfg.validate.threshold <= 100:
        raise ConfigError(source, f"validate.threshold: {cfg.validate.threshold} is outside 0–100")
    for i, url in enumerate(cfg.validate.urls):
        if not url.startswith(("http://", "https://")):
            raise ConfigError(source, f"validate.urls[{i}]: {url!r} is not an http(s) URL")
    for i, r in enumerate(cfg.ingress.routes):
        port(r.port, f"ingress.routes[{i}].port")


def _check_comment(comment: str, key: str, source: str) -> None:
    """A ufw comment travels through a remote shell and ``ufw show added``: keep it to one printable line."""
    if "'" in comment:
        raise ConfigError(source, f"{key}: ufw refuses a single quote in a comment")
    if any(unicodedata.category(ch) == "Cc" for ch in comment):
        raise ConfigError(source, f"{key}: control characters (newline, tab, …) cannot go into a ufw comment")
