"""Every place a pod template names the app's port: moved with it to the host port, or refused (pure code).

Moved (each with a note): the container port itself (named probe and Service ports follow its
name), every entry of the variable that tells the app where to listen, numeric httpGet /
tcpSocket / grpc ports of every probe (liveness, readiness, startup) and lifecycle hook of every
container and sidecar, and the ``prometheus.io/port`` annotation. ``$(PORT)`` in args, command or
env values follows the variable (Kubernetes expands it from the container's env).

Refused, with the field path (warned instead under ``--keep-port``, where nothing moves): the
port written into args or command, an exec probe or hook, an httpGet header, another env value
or annotation, another port entry; a port variable taken from ``valueFrom`` or only from
``envFrom``; entries of the variable that disagree.

Env: Kubernetes builds a container's environment in order, envFrom first, then each env entry,
a later entry of a name replacing an earlier one — the last one wins (the kubelet's
``makeEnvironmentVariables``, ``tmpEnv[envVar.Name] = runtimeVal``; the API reference of
``envFrom``: "Values defined by an Env with a duplicate key will take precedence"), and the API
server warns that an entry "hides previous definition". :func:`env_entry` reads it that way.
Server-side apply refuses a list entry twice under one key (``duplicate entries for key
[name="PORT"]``), so :func:`dedupe_env` keeps one entry per name, with the value Kubernetes uses.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from keybuzz_fix.cluster.objects import Obj
from keybuzz_fix.cluster.scheduling import is_sidecar
from keybuzz_fix.hints import hint

PROBES = ("livenessProbe", "readinessProbe", "startupProbe")
HOOKS = ("postStart", "preStop")
HANDLERS = ("httpGet", "tcpSocket", "grpc")
SCRAPE_PORT = "prometheus.io/port"
_LOCAL = r"(?:localhost|127\.0\.0\.1|0\.0\.0\.0|\[::1?\])"
_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


@dataclass
class PortFindings:
    """What moving the port rewrote (notes) and what names it where the tool cannot move it (problems)."""

    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def pod_containers(pod: Obj) -> Iterator[tuple[str, Obj]]:
    """Yield every container of a pod template with its field path: ``containers[i]``, then ``initContainers[j]``."""
    for key in ("containers", "initContainers"):
        for i, c in enumerate(pod.get(key) or []):
            if isinstance(c, dict):
                yield f"{key}[{i}]", c


def env_entry(container: Obj, name: str) -> tuple[int, Obj] | None:
    """Return the env entry of ``name`` the container gets — the last one — with its index, or None."""
    found = None
    for i, var in enumerate(container.get("env") or []):
        if var.get("name") == name:
            found = (i, var)
    return found


def names_port(text: str, port: int) -> bool:
    """Whether a string names ``port``: as a whole word, after a local host or a bare colon, or as a port option."""
    n = re.escape(str(port))
    return any(
        re.search(p, text, re.IGNORECASE)
        for p in (
            rf"(?:^|[\s\"']){n}(?:[\s\"';]|$)",  # "3001", "serve 3001", "-p '3001'"
            rf"(?:^|[\s\"'=,(/@]){_LOCAL}?:{n}(?!\d)",  # ":3001", "localhost:3001", "http://127.0.0.1:3001/health"
            rf"port[\w.-]*[\"']?\s*[=:\s]\s*[\"']?{n}(?!\d)",  # "--port=3001", "PORT=3001", "server.port: 3001"
        )
    )


def move_port(
    pod: Obj,
    listening: tuple[str, Obj],
    port: Obj,
    port_env: str,
    moves: tuple[int, int],
    app: str,
    obj: str,
    prefix: str,
) -> PortFindings:
    """Move the app's port (``moves``: from, to) everywhere the pod names it, in place; say what cannot move.

    ``listening`` is the container the Service sends traffic to, with its path; ``port`` its
    port entry; ``obj`` names the object (``Deployment ns/name``) and ``prefix`` the pod's path
    in it (``spec.template.spec``) for the messages.
    """
    app_port, host_port = moves
    out = PortFindings()
    path, container = listening
    _move_env(container, f"{prefix}.{path}", port_env, app_port, host_port, app, obj, out)
    for cpath, c in pod_containers(pod):
        for key, _handler, action in _handlers(c):
            if action.get("port") == app_port:
                action["port"] = host_port
                out.notes.append(f"{app}: container {c.get('name')} {key} port {app_port} → {host_port}")
            elif c is container and port.get("name") and action.get("port") == port.get("name"):
                out.notes.append(
                    f"{app}: container {c.get('name')} {key} port {action['port']!r} now resolves to {host_port}"
                )
        for pi, p in enumerate(c.get("ports") or []):
            if p is not port and p.get("containerPort") == app_port:
                out.problems.append(
                    f"{obj}: {prefix}.{cpath}.ports[{pi}] declares port {app_port} too: only the port the Service "
                    f"targets moves to {host_port}; remove the other entry"
                    + hint("--keep-port", ", or pass --keep-port")
                )
    for at in written_ports(pod, port_env, container, app_port):
        out.problems.append(f"{obj}: {prefix}.{at} names port {app_port}: {_hint(at, port_env, host_port)}")
    for text_path, text in mentions(pod, port_env, container):
        if text_path.startswith(path + ".") and uses(text, port_env) and not names_port(text, app_port):
            out.notes.append(f"{app}: {text_path} uses $({port_env}): it follows the variable to {host_port}")
    return out


def written_ports(pod: Obj, port_env: str, listening: Obj, app_port: int) -> list[str]:
    """Return the paths where the pod writes ``app_port`` into text the tool does not rewrite (args, exec, env, …)."""
    return [path for path, text in mentions(pod, port_env, listening) if names_port(text, app_port)]


def uses(text: str, name: str) -> bool:
    """Whether a string refers to the variable ``name`` as ``$(name)``, which Kubernetes expands."""
    return any(m.group(1) == name for m in _REFERENCE.finditer(text))


def mentions(pod: Obj, port_env: str, listening: Obj) -> Iterator[tuple[str, str]]:
    """Yield every free-text field of the pod's containers (path, text) where a port may be written.

    Args and command, env values (but the listening container's port variable itself), exec
    probes and hooks, httpGet headers.
    """
    for cpath, c in pod_containers(pod):
        for key in ("command", "args"):
            for i, text in enumerate(c.get(key) or []):
                yield f"{cpath}.{key}[{i}]", str(text)
        for i, var in enumerate(c.get("env") or []):
            if "value" in var and not (c is listening and var.get("name") == port_env):
                yield f"{cpath}.env[{i}] ({var.get('name')})", str(var["value"])
        for key, handler, action in _handlers(c, exec_too=True):
            if handler == "exec":
                for i, text in enumerate(action.get("command") or []):
                    yield f"{cpath}.{key}.exec.command[{i}]", str(text)
            for i, header in enumerate(action.get("httpHeaders") or [] if handler == "httpGet" else []):
                yield f"{cpath}.{key}.httpGet.httpHeaders[{i}]", str(header.get("value", ""))


def move_annotation(annotations: dict[str, str], moves: tuple[int, int], app: str, where: str) -> PortFindings:
    """Move ``prometheus.io/port`` with the port (in place); refuse another annotation that is the port."""
    app_port, host_port = moves
    out = PortFindings()
    for key, value in annotations.items():
        if str(value).strip() != str(app_port):
            continue
        if key == SCRAPE_PORT:
            annotations[key] = str(host_port)
            out.notes.append(f"{app}: pod annotation {SCRAPE_PORT} {app_port} → {host_port}")
        else:
            out.problems.append(
                f"{where}.metadata.annotations[{key}] is port {app_port}: the tool cannot tell what reads it, "
                f"so it does not move it to {host_port}; "
                + hint(
                    "--keep-port", "pass --keep-port, or change it by hand afterwards", "change it by hand afterwards"
                )
            )
    return out


def _hint(path: str, port_env: str, host_port: int) -> str:
    if ".exec." in path:
        how = f"an exec command runs as written: use sh -c with ${port_env} there"
    elif "httpHeaders" in path:
        how = "use a header without the port"
    else:
        how = f"use $({port_env}) there, which Kubernetes expands from the env"
    return f"the tool does not rewrite ports inside text, so it cannot move it to {host_port}; {how}" + hint(
        "--keep-port", ", or pass --keep-port"
    )


def _handlers(container: Obj, *, exec_too: bool = False) -> Iterator[tuple[str, str, Obj]]:
    """Yield (probe or hook, handler kind, action) for every probe and lifecycle hook of a container."""
    places = [(key, container.get(key)) for key in PROBES]
    lifecycle = container.get("lifecycle") or {}
    places += [(f"lifecycle.{hook}", lifecycle.get(hook)) for hook in HOOKS]
    for key, probe in places:
        if not isinstance(probe, dict):
            continue
        for handler in (*HANDLERS, "exec") if exec_too else HANDLERS:
            action = probe.get(handler)
            if isinstance(action, dict) and (handler == "exec" or "port" in action or handler == "httpGet"):
                yield key, handler, action


def _move_env(
    container: Obj,
    cpath: str,
    port_env: str,
    app_port: int,
    host_port: int,
    app: str,
    obj: str,
    out: PortFindings,
) -> None:
    """Rewrite every entry of the port variable (Kubernetes uses the last), or say why it cannot be."""
    how = "name the variable in the config (apps[].port_env)"
    how = hint("--keep-port", f"--keep-port runs it on {app_port} instead, or {how}", how)
    entries = [(i, var) for i, var in enumerate(container.get("env") or []) if var.get("name") == port_env]
    if not entries:
        sources = [f"envFrom[{i}]" for i, _ in enumerate(container.get("envFrom") or [])]
        maybe = (
            f" ({port_env} may come from {cpath}.{', '.join(sources)}, which the tool cannot rewrite)"
            if sources
            else ""
        )
        out.problems.append(
            f"{obj} listens on {app_port} and nothing in its env tells it where to listen "
            f"(no {port_env} variable){maybe}, so it cannot move to host port {host_port}; {how}"
        )
        return
    for i, var in entries:
        if "value" not in var:
            source = next(iter(var.get("valueFrom") or {}), "a reference")
            out.problems.append(
                f"{obj} listens on {app_port} and its {port_env} ({cpath}.env[{i}]) comes from a reference "
                f"(valueFrom.{source}) the tool cannot rewrite to {host_port}; {how}"
            )
    if out.problems:
        return
    last_i, last = entries[-1]
    used = str(last["value"]).strip()
    if used not in (str(app_port), str(host_port)):
        out.problems.append(
            f"{obj}: env {port_env} is {last['value']!r} ({cpath}.env[{last_i}], the entry Kubernetes uses) but the "
            f"Service targets port {app_port}, so where the app listens is unclear; {how}"
        )
        return
    for i, var in entries[:-1]:
        if str(var["value"]).strip() != used:
            out.problems.append(
                f"{obj}: {cpath}.env[{i}] sets {port_env} to {var['value']!r} but {cpath}.env[{last_i}], the entry "
                f"Kubernetes uses (the last), sets {used!r}: make them agree; {how}"
            )
    if out.problems:
        return
    if used == str(host_port):
        out.notes.append(f"{app}: env {port_env} is already {host_port}")
        return
    for _, var in entries:
        var["value"] = str(host_port)
    if len(entries) == 1:
        out.notes.append(f"{app}: env {port_env} {app_port} → {host_port}")
    else:
        listed = ", ".join(f"env[{i}]" for i, _ in entries)
        out.notes.append(
            f"{app}: env {port_env} {app_port} → {host_port} in all {len(entries)} entries ({listed}; Kubernetes "
            "uses the last)"
        )


def dedupe_env(pod: Obj, where: str, app: str) -> PortFindings:
    """Keep one env entry per name in every container (in place): where the name first appears, with its last value.

    Server-side apply refuses duplicates. That is what the container gets unless an entry between
    the first and the last refers to the name as ``$(NAME)`` while the values differ: refused.
    """
    out = PortFindings()
    for cpath, c in pod_containers(pod):
        env = c.get("env")
        if not isinstance(env, list):
            continue
        seen: dict[str, list[int]] = {}
        for i, var in enumerate(env):
            seen.setdefault(str(var.get("name")), []).append(i)
        twice = {name: idx for name, idx in seen.items() if len(idx) > 1}
        if not twice:
            continue
        drop: set[int] = set()
        for name, idx in twice.items():
            first, last = idx[0], idx[-1]
            if any(env[i] != env[last] for i in idx):
                between = [
                    i for i in range(first + 1, last) if i not in idx and uses(str(env[i].get("value", "")), name)
                ]
                if between:
                    out.problems.append(
                        f"{where}.{cpath}.env sets {name} {len(idx)} times with different values and "
                        f"env[{between[0]}] refers to $({name}) in between: server-side apply takes one entry per "
                        "name and the tool cannot tell which value that entry should read; keep one entry"
                    )
                    continue
            env[first] = env[last]
            drop.update(idx[1:])
            out.notes.append(
                f"{app}: container {c.get('name')} sets env {name} {len(idx)} times "
                f"({', '.join(f'env[{i}]' for i in idx)}): Kubernetes uses the last, server-side apply takes one "
                "entry per name: one entry kept, with the last value"
            )
        c["env"] = [var for i, var in enumerate(env) if i not in drop]
    return out


def port_conflicts(pod: Obj, moved: Obj, host_port: int, obj: str, prefix: str) -> list[str]:
    """Refuse host-port clashes inside the pod once it runs with hostNetwork (every container port is a host port).

    The containers and the sidecars (restartable init containers) hold their ports for the pod's
    life: two of them may not hold the same one. hostNetwork also wants hostPort = containerPort.
    """
    problems = []
    held: dict[tuple[int, str], str] = {}
    proto = str(moved.get("protocol") or "TCP")
    held[(host_port, proto)] = "the app's port"
    for cpath, c in pod_containers(pod):
        running = cpath.startswith("containers") or is_sidecar(c)
        for pi, p in enumerate(c.get("ports") or []):
            if p is moved:
                continue
            at = f"{prefix}.{cpath}.ports[{pi}]"
            number = p.get("containerPort")
            if p.get("hostPort") and p.get("hostPort") != number:
                problems.append(
                    f"{obj}: container {c.get('name')} port {number} has hostPort {p['hostPort']}; with "
                    f"hostNetwork both must be equal ({at})"
                )
            if not running or not isinstance(number, int):
                continue
            key = (number, str(p.get("protocol") or "TCP"))
            if key == (host_port, proto):
                kind = "container" if cpath.startswith("containers") else "sidecar"
                problems.append(f"{obj}: {kind} {c.get('name')} already uses port {host_port} ({at})")
            elif key in held:
                problems.append(
                    f"{obj}: {at} and {held[key]} both hold host port {number}/{key[1]} for the pod's life "
                    "under hostNetwork"
                )
            else:
                held[key] = at
    return problems
