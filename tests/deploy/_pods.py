"""A rendered pod's container as a local process: its argv, environment and volumes, as the
kubelet would give them, from the rendered objects, the Containerfile and fixture Secrets."""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from tests.deploy._support import Doc, find
from tests.deploy.test_containerfile import _stages

# Written by the kubelet into every container (besides the Service links the pods turn off).
POD_IP = "127.0.0.1"
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
# Kubernetes' dependent-variable syntax: $(VAR) expands, $$ is a literal $.
_REFERENCE = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")


class PodWouldNotStart(AssertionError):
    """The kubelet would refuse to create this container (CreateContainerConfigError, a
    volume it cannot mount): a missing non-optional ConfigMap, Secret or key."""


@dataclass(frozen=True)
class Image:
    """What the Containerfile's final stage gives a container: ENTRYPOINT, CMD, ENV, WORKDIR."""

    entrypoint: list[str]
    cmd: list[str]
    env: dict[str, str]
    workdir: str


@dataclass
class Container:
    """One container made runnable here: every absolute path it is given lives under `root`."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    mounts: dict[str, Path] = field(default_factory=dict)  # mountPath -> local directory


def image() -> Image:
    """The runtime (last) stage of the Containerfile."""
    stage = _stages()[-1]
    env: dict[str, str] = {}
    entrypoint: list[str] = []
    cmd: list[str] = []
    workdir = "/"
    for word, rest in stage:
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
        elif word == "WORKDIR":
            workdir = str(PurePosixPath(workdir) / rest)
        elif word == "ENTRYPOINT":
            entrypoint = json.loads(rest)
        elif word == "CMD":
            cmd = json.loads(rest)
    return Image(entrypoint=entrypoint, cmd=cmd, env=env, workdir=workdir)


def argv(container: Doc, img: Image) -> list[str]:
    """Kubernetes' rule: `command` replaces ENTRYPOINT (and drops CMD), `args` replaces CMD."""
    if "command" in container:
        return [*container["command"], *container.get("args", [])]
    return [*img.entrypoint, *container.get("args", img.cmd)]


def local_program(argv0: str) -> str:
    """The image's program from this venv (the package installed there is the image's)."""
    found = Path(sys.executable).parent / argv0
    if "/" in argv0 or not os.access(found, os.X_OK):
        raise AssertionError(f"{argv0!r} is not a console script of this project's venv")
    return str(found)


def configmaps(docs: list[Doc]) -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: dict(d.get("data") or {}) for d in find(docs, "ConfigMap")}


def mount_volumes(
    spec: Doc,
    container: Doc,
    root: Path,
    maps: dict[str, dict[str, str]],
    secrets: dict[str, dict[str, str]],
) -> dict[str, Path]:
    """Each volumeMount as a directory under `root`: emptyDir (and claims) empty, Secret and
    ConfigMap volumes filled as the kubelet fills them (files behind a `..data` symlink, which
    it swaps on an update). Returns mountPath -> directory."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    made: dict[str, Path] = {}
    mounts: dict[str, Path] = {}
    for mount in container.get("volumeMounts", []):
        name = mount["name"]
        if name not in volumes:
            raise PodWouldNotStart(f"volumeMount {name!r} names no volume of the pod")
        if name not in made:
            made[name] = _volume(volumes[name], root / "volumes" / name, maps, secrets)
        local = made[name] / mount["subPath"] if "subPath" in mount else made[name]
        mounts[mount["mountPath"].rstrip("/") or "/"] = local
    return mounts


def _volume(
    volume: Doc, where: Path, maps: dict[str, dict[str, str]], secrets: dict[str, dict[str, str]]
) -> Path:
    where.mkdir(parents=True)
    if "emptyDir" in volume or "persistentVolumeClaim" in volume or "ephemeral" in volume:
        return where
    if "secret" in volume:
        source, store, what = volume["secret"], secrets, "Secret"
        ref = source["secretName"]
    elif "configMap" in volume:
        source, store, what = volume["configMap"], maps, "ConfigMap"
        ref = source["name"]
    else:
        raise AssertionError(f"volume {volume['name']!r}: this test maps no such volume type")
    if ref not in store:
        if source.get("optional"):
            return where  # an absent optional source mounts as an empty directory
        raise PodWouldNotStart(f"volume {volume['name']!r}: {what} {ref} does not exist")
    data = store[ref]
    items = source.get("items") or [{"key": key, "path": key} for key in data]
    mode = source.get("defaultMode", 0o644)
    payload = where / "..2000_01_01_00_00_00.000000000"
    payload.mkdir()
    for item in items:
        if item["key"] not in data:
            if source.get("optional"):
                continue
            raise PodWouldNotStart(f"volume {volume['name']!r}: {what} {ref} has no {item['key']}")
        target = payload / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(data[item["key"]])
        target.chmod(item.get("mode", mode))
    (where / "..data").symlink_to(payload.name)
    for top in {PurePosixPath(item["path"]).parts[0] for item in items}:
        if (payload / top).exists():
            (where / top).symlink_to(Path("..data") / top)
    return where


def environment(
    container: Doc,
    img: Image,
    maps: dict[str, dict[str, str]],
    secrets: dict[str, dict[str, str]],
    pod: dict[str, str],
) -> dict[str, str]:
    """The container's environment: the image's ENV, then `envFrom` in order, then `env` in
    order (each overriding what came before), with $(VAR) references expanded and `valueFrom`
    resolved. `pod` holds the fieldRef values (metadata.name, metadata.namespace, ...)."""
    env = dict(img.env)
    for source in container.get("envFrom", []):
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            ref, store, what = source["configMapRef"], maps, "ConfigMap"
        else:
            ref, store, what = source["secretRef"], secrets, "Secret"
        if ref["name"] not in store:
            if ref.get("optional"):
                continue
            raise PodWouldNotStart(f"envFrom: {what} {ref['name']} does not exist")
        for key, value in store[ref["name"]].items():
            if _ENV_NAME.match(prefix + key):  # the kubelet skips invalid names
                env[prefix + key] = value
    for var in container.get("env", []):
        if "valueFrom" not in var:
            env[var["name"]] = _expand(var.get("value", ""), env)
            continue
        found = _value_from(var["name"], var["valueFrom"], maps, secrets, pod)
        if found is not None:  # an absent optional key sets nothing
            env[var["name"]] = found
    return env


def _expand(value: str, env: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        return env.get(match[1], match[0])  # an unknown reference stays as written

    return _REFERENCE.sub(one, value)


def _value_from(
    name: str,
    source: Doc,
    maps: dict[str, dict[str, str]],
    secrets: dict[str, dict[str, str]],
    pod: dict[str, str],
) -> str | None:
    if "fieldRef" in source:
        path = source["fieldRef"]["fieldPath"]
        if path not in pod:
            raise AssertionError(f"env {name}: fieldRef {path} is not reproduced by this test")
        return pod[path]
    if "configMapKeyRef" in source:
        ref, store, what = source["configMapKeyRef"], maps, "ConfigMap"
    elif "secretKeyRef" in source:
        ref, store, what = source["secretKeyRef"], secrets, "Secret"
    else:
        raise AssertionError(f"env {name}: {sorted(source)} is not reproduced by this test")
    found = store.get(ref["name"], {}).get(ref["key"])
    if found is None and not ref.get("optional"):
        raise PodWouldNotStart(f"env {name}: {what} {ref['name']} has no key {ref['key']}")
    return found


def rewrite_paths(env: dict[str, str], mounts: dict[str, Path]) -> dict[str, str]:
    """Values naming a path at or under a mountPath, pointed at the local directory instead
    (the deepest mount wins, as in the container)."""
    rewritten = {}
    for key, value in env.items():
        rewritten[key] = value
        for mount_path in sorted(mounts, key=len, reverse=True):
            if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
                rewritten[key] = str(mounts[mount_path]) + value[len(mount_path.rstrip("/")) :]
                break
    return rewritten


def local_path(path: str, mounts: dict[str, Path], root: Path) -> Path:
    """Where a path of the container's file system is here: under its mount, else under
    `root` (the image's read-only root, which this test does not reproduce)."""
    rewritten = rewrite_paths({"path": path}, mounts)["path"]
    if rewritten != path:
        return Path(rewritten)
    return root / "rootfs" / path.lstrip("/")


def container_port(container: Doc, port: int | str) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    for declared in container.get("ports", []):
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise AssertionError(f"{container['name']}: no container port named {port!r}")


def prestop_seconds(container: Doc) -> float:
    """How long the preStop hook holds the container before SIGTERM: `sleep N` only."""
    hook = container.get("lifecycle", {}).get("preStop")
    if hook is None:
        return 0.0
    command = hook.get("exec", {}).get("command", [])
    if len(command) == 2 and command[0] == "sleep":
        return float(command[1])
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    raise AssertionError(f"{container['name']}: preStop {hook} is not reproduced by this test")
