"""Runs the built image as the dev overlay's Deployments run it, with podman, and smoke-tests it
over HTTP: the `run` step of scripts/image-test (which builds the image first).

Each rendered container of ours becomes a `podman run`: its command, its environment (the image's
ENV, then the settings ConfigMap and fixture Secrets as the kubelet resolves them), its
securityContext, limits and volumes. What cannot apply on one machine is replaced and says why
in `_launch`. The dev overlay's `serve` does not project (RAG_PROJECTOR_IN_PROCESS=false) and
searches the Qdrant cluster the worker writes to; there is no cluster here, so each pod has the
embedded index on its own /data, an ingest through `serve` is indexed by the worker container,
and once both have stopped `serve` is started again on the worker's /data to search it.

    python -m tests.deploy._image --image NAME --run-id ID --work DIR --kubectl PATH \
        --redis-url URL -- PODMAN_RUN_FLAGS...
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy import _pods
from tests.deploy._support import API, SECRET, TARGETS, WORKER, Doc, one, render

# podman's own complaint, once per container, that it cannot schedule the HEALTHCHECK without
# systemd; `podman healthcheck run` still runs it.
_NOISE = "unable to get systemd connection"
DOCUMENTS = [
    {
        "id": "insulin",
        "title": "Insulin",
        "text": "Insulin is a peptide hormone made by the pancreas; it controls glucose uptake.",
    },
    {
        "id": "volcano",
        "title": "Volcanoes",
        "text": "A volcano is a rupture in the crust through which lava and ash escape.",
    },
    {
        "id": "photosynthesis",
        "title": "Photosynthesis",
        "text": "Plants turn light, water and carbon dioxide into sugar and oxygen.",
    },
]
QUERY = "which hormone controls glucose uptake"


def say(message: str) -> None:
    print(f"image-test: {message}", file=sys.stderr, flush=True)


class StepFailed(Exception):
    """A step of the smoke test failed; the message says what was seen."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"FAILED at step {step}: {message}")
        self.step = step


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    say(f"step {name}")
    try:
        yield
    except StepFailed:
        raise
    except Exception as exc:
        raise StepFailed(name, f"{type(exc).__name__}: {exc}") from exc


def _quiet(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if _NOISE not in line)


def podman(*args: str, timeout: float = 120.0) -> str:
    proc = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"podman {args[0]} exited {proc.returncode}: {_quiet(proc.stderr).strip()}"
        )
    return proc.stdout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bytes(quantity: str) -> int:
    """A Kubernetes memory quantity (512Mi, 2Gi, 1G, 1000) in bytes."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6}
    units |= {"G": 10**9, "T": 10**12}
    for suffix in sorted(units, key=len, reverse=True):
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * units[suffix])
    return int(quantity)


def _cpus(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


@dataclass
class Run:
    """What every container of this run shares."""

    image: str
    run_id: str
    work: Path
    machine_flags: list[str]
    docs: list[Doc]
    secrets: dict[str, dict[str, str]]

    @property
    def prefix(self) -> str:
        return f"test:image:{self.run_id}:"


@dataclass
class Pod:
    """A container started from a rendered Deployment, and where its /data lives here."""

    where: str
    name: str
    spec: Doc
    manifest: Doc
    port: int
    data: Path
    user: tuple[int, int]
    started: float  # time.monotonic() when `podman run` returned

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def logs(self) -> str:
        proc = subprocess.run(
            ["podman", "logs", "--tail", "80", self.name],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return _quiet(proc.stdout + proc.stderr)

    def state(self) -> dict[str, Any]:
        found: list[dict[str, Any]] = json.loads(podman("inspect", self.name))
        state: dict[str, Any] = found[0]["State"]
        return state

    def fail(self, message: str) -> AssertionError:
        return AssertionError(
            f"{self.where}: {message}\n--- podman logs {self.name} ---\n{self.logs()}"
        )


def _security_flags(spec: Doc, manifest: Doc) -> tuple[list[str], tuple[int, int], int | None]:
    """The securityContext as podman flags (the container's fields over the pod's), the
    uid:gid the process gets, and the pod's fsGroup."""
    pod_ctx = spec.get("securityContext", {})
    ctx = pod_ctx | manifest.get("securityContext", {})
    flags: list[str] = []
    uid, gid = int(ctx.get("runAsUser", 1000)), int(ctx.get("runAsGroup", 1000))
    flags += ["--user", f"{uid}:{gid}"]
    fs_group = pod_ctx.get("fsGroup")
    if fs_group is not None:
        flags += ["--group-add", str(fs_group)]
    if ctx.get("readOnlyRootFilesystem"):
        # podman's --read-only adds tmpfs mounts of its own; the pod has only its volumes.
        flags += ["--read-only", "--read-only-tmpfs=false"]
    caps = ctx.get("capabilities", {})
    flags += [f"--cap-drop={c.lower()}" for c in caps.get("drop", [])]
    flags += [f"--cap-add={c.lower()}" for c in caps.get("add", [])]
    if ctx.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    if ctx.get("privileged"):
        flags += ["--privileged"]
    seccomp = ctx.get("seccompProfile", {}).get("type", "RuntimeDefault")
    # podman's default profile is the runtime's default.
    assert seccomp == "RuntimeDefault", f"seccompProfile {seccomp} is not reproduced here"
    return flags, (uid, gid), fs_group


def _volume_flags(
    spec: Doc,
    manifest: Doc,
    mounts: dict[str, Path],
    data_mount: str,
    data: Path,
    user: tuple[int, int],
    fs_group: int | None,
) -> list[str]:
    """Each volumeMount: the data volume as a directory here owned by the pod's user, other
    emptyDirs as tmpfs (exec allowed, as an emptyDir is), Secrets and ConfigMaps as the
    directories _pods filled, readable by the pod's fsGroup as the kubelet makes them."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    flags: list[str] = []
    for mount in manifest.get("volumeMounts", []):
        path = mount["mountPath"].rstrip("/") or "/"
        volume = volumes[mount["name"]]
        mode = "ro" if mount.get("readOnly") else "rw"
        if path == data_mount:
            data.mkdir(parents=True, exist_ok=True)
            os.chown(data, user[0], fs_group if fs_group is not None else user[1])
            data.chmod(0o750)
            flags += ["--volume", f"{data}:{path}:{mode}"]
        elif "emptyDir" in volume:
            size = volume["emptyDir"].get("sizeLimit")
            options = ["rw", "exec", "nosuid", "nodev", "mode=1777"]
            options += [f"size={_bytes(size)}"] if size else []
            flags += ["--tmpfs", f"{path}:{','.join(options)}"]
        else:
            local = mounts[path]
            if fs_group is not None:
                for entry in [local, *local.rglob("*")]:
                    os.lchown(entry, 0, fs_group)
            flags += ["--volume", f"{local}:{path}:{mode}"]
    return flags


def _launch(run: Run, deployment: Doc, *, suffix: str, data: Path | None = None) -> Pod:
    """Start the Deployment's one container; `data`: the directory to mount as its data
    volume (a new one under the run's work directory by default)."""
    spec = deployment["spec"]["template"]["spec"]
    name = deployment["metadata"]["name"]
    assert len(spec["containers"]) == 1, f"{name}: one container expected"
    assert not spec.get("initContainers"), f"{name}: init containers are not run here"
    manifest = spec["containers"][0]
    where = f"dev:{name}/{manifest['name']}"
    pod_name = f"{name}-0000000000-{suffix}"
    home = run.work / f"{name}-{suffix}"
    img = _pods.image()
    maps = _pods.configmaps(run.docs)
    mounts = _pods.mount_volumes(spec, manifest, home, maps, run.secrets)
    fields = {
        "metadata.name": pod_name,
        "metadata.namespace": "rag-dev",
        "status.podIP": _pods.POD_IP,
    }
    env = _pods.environment(manifest, img, maps, run.secrets, fields)
    assert env.get("REDIS_URL") == run.secrets[SECRET]["REDIS_URL"], f"{where}: REDIS_URL"
    port = _free_port()
    env |= {
        # --network host: the pods share the machine's network, so each listens on a port of
        # its own, and on loopback only (the probes and this test are local).
        "RAG_HOST": "127.0.0.1",
        "RAG_PORT": str(port),
        # No Qdrant cluster here: the embedded index, on the pod's /data volume.
        "QDRANT_URL": "",
        # The run's own keys on the machine's Redis, which other tests share.
        "RAG_STREAM_PREFIX": run.prefix,
    }
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        # The overlay's exporter, pointed at a port where no collector listens (no Jaeger).
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{_free_port()}"
    data_dir = env["RAG_DATA_DIR"]
    data_mount = max(
        (p for p in mounts if data_dir == p or data_dir.startswith(p.rstrip("/") + "/")),
        key=len,
        default=None,
    )
    assert data_mount is not None, f"{where}: RAG_DATA_DIR {data_dir} is on no volume"
    security, user, fs_group = _security_flags(spec, manifest)
    limits = manifest.get("resources", {}).get("limits", {})
    resources = [f"--memory={_bytes(limits['memory'])}"] if "memory" in limits else []
    resources += [f"--cpus={_cpus(str(limits['cpu']))}"] if "cpu" in limits else []
    data = data or home / "data"
    volumes = _volume_flags(spec, manifest, mounts, data_mount, data, user, fs_group)
    entrypoint = ["--entrypoint", json.dumps(manifest["command"])] if "command" in manifest else []
    container = f"rag-image-test-{run.run_id}-{manifest['name']}-{suffix}"
    podman(
        "run",
        "--detach",
        "--name",
        container,
        # The kubelet names the pod's host after the pod (the projector's consumer name).
        "--hostname",
        pod_name,
        *run.machine_flags,
        *security,
        *resources,
        *volumes,
        *(f"--env={key}={value}" for key, value in env.items()),
        *entrypoint,
        run.image,
        *manifest.get("args", []),
    )
    return Pod(where, container, spec, manifest, port, data, user, time.monotonic())


def _probe_path(pod: Pod, probe: str) -> str:
    get = pod.manifest[probe].get("httpGet")
    assert get is not None, f"{pod.where}: {probe} is not an HTTP GET"
    return str(get["path"])


def _wait_ready(pod: Pod) -> float:
    """Seconds from the start until the readiness probe's path answers 200, within what the
    startup probe allows (failureThreshold x periodSeconds)."""
    startup = pod.manifest["startupProbe"]
    budget = float(startup.get("failureThreshold", 3) * startup.get("periodSeconds", 10))
    path = _probe_path(pod, "readinessProbe")
    last = "no answer"
    with httpx.Client(timeout=3.0) as http:
        while time.monotonic() - pod.started < budget:
            state = pod.state()
            if not state.get("Running"):
                raise pod.fail(f"exited with {state.get('ExitCode')} before it was ready")
            try:
                answer = http.get(pod.url(path))
                if answer.status_code == 200:
                    for probe in ("startupProbe", "livenessProbe"):
                        other = http.get(pod.url(_probe_path(pod, probe)))
                        assert other.status_code == 200, f"{pod.where}: {probe}: {other.text}"
                    return time.monotonic() - pod.started
                last = f"{answer.status_code} {answer.text}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.5)
    raise pod.fail(f"GET {path} not 200 within {budget:.0f} s ({last})")


def _proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def _mounts(pid: int) -> dict[str, tuple[str, str]]:
    """mount point -> (its options, its file system type), from /proc/PID/mountinfo."""
    found = {}
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        after = fields.index("-")
        found[fields[4]] = (fields[5], fields[after + 1])
    return found


def _check_security(pod: Pod) -> None:
    """What the kernel says about the container's first process: it is the command, runs as
    the pod's user with no capabilities and no way to gain privileges, under seccomp, on a
    read-only root with a tmpfs /tmp, and what it wrote to its data volume is that user's."""
    pid = int(pod.state()["Pid"])
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    args = pod.manifest.get("args", [])
    assert cmdline[-len(args) :] == args, f"{pod.where}: process 1 is {cmdline}"
    status = _proc_status(pid)
    uid, gid = pod.user
    assert status["Uid"].split() == [str(uid)] * 4, f"{pod.where}: Uid {status['Uid']}"
    assert status["Gid"].split() == [str(gid)] * 4, f"{pod.where}: Gid {status['Gid']}"
    for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[caps], 16) == 0, f"{pod.where}: {caps} {status[caps]}"
    assert status["NoNewPrivs"] == "1", f"{pod.where}: NoNewPrivs {status['NoNewPrivs']}"
    assert status["Seccomp"] == "2", f"{pod.where}: Seccomp {status['Seccomp']} (2: a filter)"
    mounts = _mounts(pid)
    assert "ro" in mounts["/"][0].split(","), f"{pod.where}: root mounted {mounts['/'][0]}"
    assert mounts["/tmp"][1] == "tmpfs", f"{pod.where}: /tmp is {mounts['/tmp'][1]}"
    assert "rw" in mounts["/data"][0].split(","), f"{pod.where}: /data mounted {mounts['/data']}"
    # The process wrote its index there (each pod holds the embedded index on its /data).
    written = list(pod.data.rglob("*"))
    assert written, f"{pod.where}: nothing written to /data"
    others = [p for p in written if p.lstat().st_uid != uid]
    assert not others, f"{pod.where}: in /data, not owned by {uid}: {others[:5]}"


def _metrics(pod: Pod) -> dict[str, list[tuple[dict[str, str], float]]]:
    """GET /metrics: sample name (rag_requests_total, not its family's) -> (labels, value)."""
    answer = httpx.get(pod.url("/metrics"), timeout=10.0)
    assert answer.status_code == 200, f"{pod.where}: GET /metrics {answer.status_code}"
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


def _ingest(api: Pod) -> None:
    """Through `serve`, indexed by the worker: ?wait=true answers once the status is there."""
    answer = httpx.post(
        api.url("/api/v1/ingest?wait=true"), json={"documents": DOCUMENTS}, timeout=90.0
    )
    assert answer.status_code == 200, f"ingest: {answer.status_code} {answer.text}"
    statuses = {d["doc_id"]: d["status"] for d in answer.json()["documents"]}
    assert statuses == {d["id"]: "indexed" for d in DOCUMENTS}, f"ingest: {statuses}"


def _check_metrics(api: Pod, worker: Pod) -> None:
    served = _metrics(api)
    requests = served.get("rag_requests_total", [])
    assert any(
        "ingest" in labels.get("operation", "") and labels.get("status") == "200" and value >= 1
        for labels, value in requests
    ), f"{api.where}: no 200 ingest in rag_requests_total: {requests}"
    appended = sum(v for labels, v in served.get("rag_events_appended_total", []) if labels)
    assert appended >= len(DOCUMENTS), f"{api.where}: rag_events_appended_total {appended}"
    points = sum(v for _, v in _metrics(worker).get("rag_index_points", []))
    assert points >= len(DOCUMENTS), f"{worker.where}: rag_index_points {points}"


def _stop(pods: list[Pod]) -> dict[str, float]:
    """`podman stop` all at once (a rollout): SIGTERM, then SIGKILL once what the pod's
    terminationGracePeriodSeconds leaves after its preStop hook has passed (podman runs no
    preStop). Each must exit 0 before that. Returns the seconds each took."""
    took: dict[str, float] = {}
    errors: list[str] = []

    def one_stop(pod: Pod, grace: float) -> None:
        started = time.monotonic()
        try:
            podman("stop", "--time", str(int(grace)), pod.name, timeout=grace + 60)
        except (AssertionError, subprocess.SubprocessError) as exc:
            errors.append(f"{pod.where}: {exc}")
        took[pod.where] = time.monotonic() - started

    graces = {
        pod.where: pod.spec.get("terminationGracePeriodSeconds", 30)
        - _pods.prestop_seconds(pod.manifest)
        for pod in pods
    }
    threads = [threading.Thread(target=one_stop, args=(p, graces[p.where])) for p in pods]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, "\n".join(errors)
    for pod in pods:
        code = pod.state().get("ExitCode")
        if code != 0:
            raise pod.fail(f"exited {code} after SIGTERM (137: killed after {graces[pod.where]} s)")
        if took[pod.where] >= graces[pod.where]:
            raise pod.fail(
                f"took {took[pod.where]:.1f} s to stop, the grace is {graces[pod.where]}"
            )
    return took


def _search(api: Pod) -> None:
    answer = httpx.post(api.url("/api/v1/search"), json={"query": QUERY, "top_k": 3}, timeout=30.0)
    assert answer.status_code == 200, f"search: {answer.status_code} {answer.text}"
    results = answer.json()["results"]
    assert results and results[0]["doc_id"] == "insulin", f"search {QUERY!r}: {results}"
    document = httpx.get(api.url("/api/v1/documents/insulin"), timeout=10.0)
    assert document.status_code == 200 and document.json()["status"] == "indexed", document.text


def smoke(run: Run, started: list[Pod]) -> None:
    """Every step; containers are appended to `started` as they start, for the cleanup."""
    with step("start"):
        api_deployment = one(run.docs, "Deployment", API)
        worker_deployment = one(run.docs, "Deployment", WORKER)
        api = _launch(run, api_deployment, suffix="api")
        started.append(api)
        worker = _launch(run, worker_deployment, suffix="worker")
        started.append(worker)
    with step("ready"):
        ready = {pod.where: _wait_ready(pod) for pod in (api, worker)}
        say(", ".join(f"{where} ready in {s:.1f} s" for where, s in ready.items()))
    with step("security"):
        for pod in (api, worker):
            _check_security(pod)
    with step("healthcheck"):
        for pod in (api, worker):
            podman("healthcheck", "run", pod.name, timeout=30)
    with step("ingest"):
        _ingest(api)
    with step("metrics"):
        _check_metrics(api, worker)
    with step("stop"):
        took = _stop([api, worker])
        say(", ".join(f"{where} stopped in {s:.1f} s, exit 0" for where, s in took.items()))
    with step("search"):
        again = _launch(run, api_deployment, suffix="search", data=worker.data)
        started.append(again)
        _wait_ready(again)
        _search(again)
        took = _stop([again])
        say(f"{again.where} searched the worker's /data, stopped in {took[again.where]:.1f} s")


def _drop_keys(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    for flag in ("--image", "--run-id", "--work", "--kubectl", "--redis-url"):
        parser.add_argument(flag, required=True)
    parser.add_argument("machine_flags", nargs="*", help="flags every `podman run` gets")
    args = parser.parse_args(argv)
    # A killed run (a test's timeout) still removes its containers and keys.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started: list[Pod] = []
    try:
        with step("render"):
            docs, _ = render(args.kubectl, TARGETS["dev"])
        with (
            step("redis"),
            redis.Redis.from_url(args.redis_url, socket_connect_timeout=5) as client,
        ):
            client.ping()
        secrets = {
            SECRET: {
                "REDIS_URL": args.redis_url,
                "QDRANT_API_KEY": "fixture-qdrant-key",
                "OPENAI_API_KEY": "fixture-openai-key",
            }
        }
        run = Run(args.image, args.run_id, Path(args.work), args.machine_flags, docs, secrets)
        smoke(run, started)
        return 0
    except StepFailed as exc:
        say(str(exc))
        return 1
    finally:
        for pod in started:
            subprocess.run(["podman", "rm", "-f", "-t", "0", pod.name], capture_output=True)
        with contextlib.suppress(redis.RedisError):
            _drop_keys(args.redis_url, f"test:image:{args.run_id}:")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
