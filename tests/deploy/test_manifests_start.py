"""Every Deployment of each overlay starts: its rendered command, environment and volumes,
run here as a local process, answer its probes within 60 s and stop cleanly on SIGTERM.

dev runs on one Redis (the machine's); prod, whose settings name Sentinels, on a real primary,
replica and three Sentinels (tests/topology)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import msgspec
import pytest
import redis

from app.adapters.redis.embedded import EmbeddedRedis
from app.api.keys import KeyEntry, KeysFile, digest, new_key
from app.settings import Settings
from tests.deploy import _pods
from tests.deploy._support import (
    API,
    NAMESPACES,
    OVERLAYS,
    SECRET,
    SETTINGS_CONFIGMAP,
    WORKER,
    Doc,
    configmap,
    find,
    require_tool,
)
from tests.topology.redis_servers import SentinelSetup, wait_until

pytestmark = pytest.mark.slow

# Deployments of images that are not ours, with why they are not started here.
OTHER_IMAGES = {"dev": {"jaeger": "Jaeger's own image: the dev overlay's trace store"}}
READY_WITHIN_SECONDS = 60.0
API_KEYS_SECRET = "rag-pipeline-api-keys"
# The fixture's admin and operator key, made the way `rag-pipeline keys new` makes one.
ADMIN_KEY = new_key()
# The Secret's REDIS_URL with Sentinels: only the data nodes' database (and user and password,
# which the test's nodes do not have) counts; its host is ignored.
SENTINEL_REDIS_URL = "redis://127.0.0.1/0"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def event_log_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The machine's Redis (REDIS_URL, as in CI), else an embedded Valkey of our own."""
    machine = os.environ.get("REDIS_URL", "").strip()
    if machine:
        yield machine
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("valkey"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def sentinel_redis(
    rendered: dict[str, list[Doc]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SentinelSetup]:
    """A primary, one replica in sync and three Sentinels monitoring it under the service name
    the overlays' settings give (REDIS_SENTINEL_MASTER, kept as rendered)."""
    for tool in ("redis-server", "redis-cli"):
        require_tool(tool, "Redis >= 7 (Debian's redis-server): prod runs against Sentinels")
    names = {
        configmap(rendered[overlay], SETTINGS_CONFIGMAP)["data"]["REDIS_SENTINEL_MASTER"]
        for overlay in OVERLAYS
    } - {""}
    assert len(names) == 1, f"one Sentinel setup serves one service name, not {names}"
    (name,) = names
    with SentinelSetup(
        tmp_path_factory.mktemp("redis-sentinel"), replicas=1, sentinels=3, master_name=name
    ) as setup:
        yield setup


@pytest.fixture()
def secrets(event_log_url: str) -> dict[str, dict[str, str]]:
    """The Secrets docs/deploy.md tells the operator to create (they are never rendered)."""
    entry = KeyEntry(
        sha256=digest(ADMIN_KEY),
        tenant="deploy-test",
        scopes=["admin", "operator"],
        name="manifest test",
    )
    return {
        SECRET: {
            "REDIS_URL": event_log_url,
            "QDRANT_API_KEY": "fixture-qdrant-key",
            "OPENAI_API_KEY": "fixture-openai-key",
        },
        API_KEYS_SECRET: {"keys.json": msgspec.json.encode(KeysFile(keys=[entry])).decode()},
    }


def _runs_our_image(deployment: Doc) -> bool:
    images = {c["image"] for c in deployment["spec"]["template"]["spec"]["containers"]}
    names = {image.split("@")[0].rsplit("/", 1)[-1].split(":")[0] for image in images}
    return names == {"rag-pipeline"}


@dataclass
class Started:
    """A container running here, and what its manifest says about probing and stopping it."""

    where: str
    container: _pods.Container
    spec: Doc
    manifest: Doc
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    started: float

    def output(self) -> str:
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join(lines[-200:])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def probe_path(self, probe: str) -> str:
        get = self.manifest[probe].get("httpGet")
        assert get is not None, f"{self.where}: {probe} is not an HTTP GET"
        return str(get["path"])


def _launch(
    overlay: str,
    deployment: Doc,
    docs: list[Doc],
    secrets: dict[str, dict[str, str]],
    root: Path,
    prefix: str,
    redis_env: dict[str, str],
) -> list[Started]:
    spec = deployment["spec"]["template"]["spec"]
    name = deployment["metadata"]["name"]
    assert not spec.get("initContainers"), f"{overlay}:{name}: init containers are not run here"
    img = _pods.image()
    maps = _pods.configmaps(docs)
    pod = {
        "metadata.name": f"{name}-0000000000-test0",
        "metadata.namespace": NAMESPACES[overlay],
        "status.podIP": _pods.POD_IP,
    }
    started = []
    for manifest in spec["containers"]:
        where = f"{overlay}:{name}/{manifest['name']}"
        home = root / name / manifest["name"]
        mounts = _pods.mount_volumes(spec, manifest, home, maps, secrets)
        env = _pods.environment(manifest, img, maps, secrets, pod)
        env = _pods.rewrite_paths(env, mounts)
        env["HOSTNAME"] = pod["metadata.name"]
        settings = Settings.from_env(env)
        assert not env.get("RAG_FAULT_KILL_DOC_ID"), f"{where}: a test-only fault hook is set"
        # The kubelet probes the pod's IP on the probe's port: the app must listen there.
        probe_port = _pods.container_port(manifest, manifest["readinessProbe"]["httpGet"]["port"])
        assert settings.port == probe_port, (
            f"{where}: listens on {settings.port}, probed on {probe_port}"
        )
        assert settings.host in ("0.0.0.0", "::"), (
            f"{where}: RAG_HOST {settings.host} is unreachable"
        )
        assert env.get("REDIS_URL") == secrets[SECRET]["REDIS_URL"], (
            f"{where}: REDIS_URL not from the Secret"
        )
        assert bool(settings.redis_sentinels) is ("REDIS_SENTINELS" in redis_env), where
        port = _free_port()
        env |= {
            # Here, not the pod's IP; a free port, so overlays and runs never collide.
            "RAG_HOST": "127.0.0.1",
            "RAG_PORT": str(port),
            # qdrant-client's in-process local mode instead of the overlay's cluster.
            "QDRANT_URL": ":memory:",
            # The overlay's Deployments share it, as they share a namespace's Redis.
            "RAG_STREAM_PREFIX": prefix,
            # With Sentinels, the test's (the rendered value was validated above).
            **redis_env,
        }
        if settings.otel_exporter_otlp_endpoint:
            # The overlay's exporter, pointed at a port where no collector listens.
            parts = urlsplit(settings.otel_exporter_otlp_endpoint)
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"{parts.scheme}://127.0.0.1:{_free_port()}"
        argv = _pods.argv(manifest, img)
        argv[0] = _pods.local_program(argv[0])
        cwd = _pods.local_path(img.workdir, mounts, home)
        cwd.mkdir(parents=True, exist_ok=True)
        container = _pods.Container(manifest["name"], argv, env, cwd, mounts)
        log = home / "output.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        started.append(Started(where, container, spec, manifest, port, proc, log, time.monotonic()))
    return started


def _wait_ready(run: Started) -> None:
    path = run.probe_path("readinessProbe")
    deadline = run.started + READY_WITHIN_SECONDS
    last = "no answer"
    with httpx.Client(timeout=3.0) as http:
        while time.monotonic() < deadline:
            if run.proc.poll() is not None:
                pytest.fail(
                    f"{run.where} exited with {run.proc.returncode} before it was ready:\n"
                    f"{run.output()}",
                    pytrace=False,
                )
            try:
                answer = http.get(run.url(path))
                if answer.status_code == 200:
                    return
                last = f"{answer.status_code} {answer.text}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.25)
    pytest.fail(
        f"{run.where}: GET {path} not 200 within {READY_WITHIN_SECONDS:.0f} s ({last}):\n"
        f"{run.output()}",
        pytrace=False,
    )


def _check_running(run: Started) -> None:
    """Every HTTP probe answers 200, and the keys the pod mounts are the ones it uses."""
    with httpx.Client(timeout=3.0) as http:
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            path = run.probe_path(probe)
            answer = http.get(run.url(path))
            assert answer.status_code == 200, f"{run.where}: {probe} GET {path}: {answer.text}"
        # An operator route both commands serve: an unknown job is 404 once the key passes.
        job = run.url(f"/api/v1/reindex/{uuid.uuid4().hex}")
        keys = bool(Settings.from_env(run.container.env).api_keys_file)
        anonymous = http.get(job).status_code
        admin = http.get(job, headers={"Authorization": f"Bearer {ADMIN_KEY}"}).status_code
        assert (anonymous, admin) == ((401, 404) if keys else (404, 404)), (
            f"{run.where}: keys file {'set' if keys else 'unset'}, "
            f"anonymous {anonymous}, admin {admin}\n{run.output()}"
        )


def _stop(runs: list[Started]) -> dict[str, float]:
    """SIGTERM to all at once (a rollout, a drained node), as the kubelet sends it after the
    preStop hook; each must exit 0 within what is left of its terminationGracePeriodSeconds
    (the kubelet would SIGKILL it then). Returns the seconds each took."""
    signalled = time.monotonic()
    for run in runs:
        run.proc.send_signal(signal.SIGTERM)
    took: dict[str, float] = {}
    while len(took) < len(runs):
        for run in runs:
            if run.where in took:
                continue
            left = run.spec.get("terminationGracePeriodSeconds", 30) - _pods.prestop_seconds(
                run.manifest
            )
            if run.proc.poll() is not None:
                took[run.where] = time.monotonic() - signalled
                code = run.proc.returncode
                assert code == 0, f"{run.where}: exited {code} after SIGTERM:\n{run.output()}"
            elif time.monotonic() - signalled > left:
                pytest.fail(
                    f"{run.where}: still running {left:.0f} s after SIGTERM:\n{run.output()}",
                    pytrace=False,
                )
        time.sleep(0.05)
    return took


def _kill(run: Started) -> None:
    if run.proc.poll() is None:
        run.proc.send_signal(signal.SIGTERM)
        try:
            run.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(run.proc.pid, signal.SIGKILL)
            run.proc.wait()


def _keys(client: redis.Redis, prefix: str) -> set[str]:
    return {k.decode() if isinstance(k, bytes) else k for k in client.scan_iter(f"{prefix}*")}


def _drop_keys(client: redis.Redis, prefix: str) -> None:
    """Delete the run's keys (on a Sentinel setup, its primary: replicas follow)."""
    try:
        keys = list(_keys(client, prefix))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _check_on_sentinel_primary(setup: SentinelSetup, prefix: str) -> None:
    """The processes wrote to the primary the Sentinels name, and its replica has the keys;
    not to the host in the Secret's REDIS_URL."""
    primary = setup.primary()
    with primary.client() as conn:
        written = _keys(conn, prefix)
    assert written, f"nothing under {prefix} on the Sentinels' primary {primary.address}"
    for port in setup.replica_ports():
        with setup.node(port).client() as conn:
            wait_until(
                f"replica {port} to have the keys", lambda: _keys(conn, prefix) >= written, 5
            )
    # Nothing listening there (a ConnectionError) means nothing can have gone there either.
    with (
        redis.Redis.from_url(SENTINEL_REDIS_URL, socket_connect_timeout=1) as conn,
        contextlib.suppress(redis.ConnectionError),
    ):
        assert not _keys(conn, prefix), f"keys on {SENTINEL_REDIS_URL}, whose host is ignored"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_starts_and_stops_cleanly(
    rendered: dict[str, list[Doc]],
    overlay: str,
    secrets: dict[str, dict[str, str]],
    event_log_url: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """Each Deployment running the rag-pipeline image, all at once as in the namespace: the
    container's command and args, the image's ENV overridden by `envFrom` and `env` (rendered
    ConfigMaps, fixture Secrets), volumes as directories here; REDIS_URL (the Secret) is the
    test's Redis, or with Sentinels the test's Sentinels name the primary; QDRANT_URL is
    `:memory:`, the OTLP endpoint a closed local port."""
    docs = rendered[overlay]
    setup: SentinelSetup | None = None
    redis_env: dict[str, str] = {}
    if configmap(docs, SETTINGS_CONFIGMAP)["data"]["REDIS_SENTINELS"]:
        # The overlay's Sentinels are placeholder hosts (example.internal): the setting's form
        # is what is tested (Settings.from_env parses the rendered value in _launch), and its
        # value is pointed at real Sentinels here, as QDRANT_URL is pointed at :memory:. The
        # service name and RAG_REDIS_MIN_REPLICAS (1: a replica confirms every write) stay as
        # rendered, so the pods run against a replicated, Sentinel-managed Redis.
        setup = request.getfixturevalue("sentinel_redis")
        secrets[SECRET]["REDIS_URL"] = SENTINEL_REDIS_URL
        redis_env = {"REDIS_SENTINELS": setup.sentinel_addresses}
    deployments = find(docs, "Deployment")
    ours = [d for d in deployments if _runs_our_image(d)]
    others = {d["metadata"]["name"] for d in deployments} - {d["metadata"]["name"] for d in ours}
    assert others == set(OTHER_IMAGES.get(overlay, {})), "a Deployment of another image"
    assert {API, WORKER} <= {d["metadata"]["name"] for d in ours}
    prefix = f"test:manifests:{overlay}:{uuid.uuid4().hex[:12]}:"
    runs: list[Started] = []
    try:
        for deployment in ours:
            runs += _launch(overlay, deployment, docs, secrets, tmp_path, prefix, redis_env)
        for run in runs:
            _wait_ready(run)
        for run in runs:
            _check_running(run)
        if setup is not None:
            _check_on_sentinel_primary(setup, prefix)
        took = _stop(runs)
        print(", ".join(f"{where} stopped in {seconds:.1f} s" for where, seconds in took.items()))
    finally:
        for run in runs:
            _kill(run)
        if setup is not None:
            _drop_keys(setup.primary().client(), prefix)
        else:
            _drop_keys(redis.Redis.from_url(event_log_url), prefix)
