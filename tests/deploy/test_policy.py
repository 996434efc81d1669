"""Policies over the rendered overlays: security, probes, resources, images, settings, network."""

from __future__ import annotations

import re
from typing import Any

import pytest

from app.settings import ENV_NAMES, SECRET_NAMES, Settings, parse_sentinels
from tests.deploy._support import (
    API,
    COMPONENTS,
    FAKE_SECRET,
    NAMESPACES,
    OVERLAYS,
    SECRET,
    SETTINGS_CONFIGMAP,
    TARGETS,
    WORKER,
    Doc,
    allows,
    components_of,
    configmap,
    containers,
    egress_of,
    find,
    label_match,
    load_yaml,
    one,
    pod_labels,
    policies_for,
    settings_of,
    sync_wave,
    workloads,
)

# Never in a ConfigMap: referenced from the Secret rag-pipeline-secrets. The app's own list
# (a new secret setting fails these tests until it is wired), and REDIS_URL, which carries the
# data nodes' password.
SECRET_SETTINGS = {"REDIS_URL"} | SECRET_NAMES
REQUIRED_SECRETS = {"REDIS_URL"}  # the others are optional (only some setups need them)

# "As in the guide".
GUIDE_RESOURCES = {
    API: {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "2Gi"}},
    WORKER: {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "2Gi"}},
}

MOVING_TAGS = {"latest", "main", "master", "dev", "develop", "edge", "nightly", "stable"}


def _all(rendered: dict[str, list[Doc]]) -> list[tuple[str, Doc, Doc]]:
    return [(name, doc, spec) for name in OVERLAYS for doc, spec in workloads(rendered[name])]


def _app_containers(docs: list[Doc]) -> list[tuple[Doc, Doc]]:
    found = []
    for name in (API, WORKER):
        deployment = one(docs, "Deployment", name)
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            found.append((deployment, container))
    return found


# --- Pod security ------------------------------------------------------------------------


def test_every_pod_and_container_is_restricted(rendered: dict[str, list[Doc]]) -> None:
    """The Pod Security Standard "restricted", and a read-only root, for every container."""
    checked = 0
    for overlay, doc, spec in _all(rendered):
        where = f"{overlay}:{doc['kind']}/{doc['metadata']['name']}"
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, where
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(key), where
        for volume in spec.get("volumes", []):
            assert "hostPath" not in volume, where
        for container in containers(spec):
            ctx = container.get("securityContext", {})
            cwhere = f"{where}/{container['name']}"
            assert ctx.get("allowPrivilegeEscalation") is False, cwhere
            assert ctx.get("privileged", False) is False, cwhere
            assert ctx.get("readOnlyRootFilesystem") is True, cwhere
            assert ctx.get("capabilities", {}).get("drop") == ["ALL"], cwhere
            assert not ctx.get("capabilities", {}).get("add"), cwhere
            assert ctx.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, cwhere
            uid = ctx.get("runAsUser", pod.get("runAsUser"))
            assert isinstance(uid, int) and uid > 0, cwhere
            profile = ctx.get("seccompProfile", pod.get("seccompProfile", {}))
            assert profile.get("type") == "RuntimeDefault", cwhere
            assert not container.get("ports") or all(
                "hostPort" not in p for p in container["ports"]
            ), cwhere
            checked += 1
    assert checked >= 5


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_app_runs_as_uid_1000(rendered: dict[str, list[Doc]], overlay: str) -> None:
    for deployment, container in _app_containers(rendered[overlay]):
        pod = deployment["spec"]["template"]["spec"]["securityContext"]
        assert pod["runAsUser"] == 1000 and pod["runAsGroup"] == 1000
        assert container["securityContext"]["runAsUser"] == 1000


def test_no_pod_mounts_a_service_account_token_or_gets_service_links(
    rendered: dict[str, list[Doc]],
) -> None:
    for overlay, doc, spec in _all(rendered):
        where = f"{overlay}:{doc['kind']}/{doc['metadata']['name']}"
        assert spec.get("automountServiceAccountToken") is False, where
        assert spec.get("enableServiceLinks") is False, where
    for overlay in OVERLAYS:
        account = one(rendered[overlay], "ServiceAccount", "rag-pipeline")
        assert account.get("automountServiceAccountToken") is False


def test_writable_paths_are_volumes(rendered: dict[str, list[Doc]]) -> None:
    """With a read-only root the app may write only to /tmp and the data volume."""
    for overlay in OVERLAYS:
        for deployment, container in _app_containers(rendered[overlay]):
            mounts = {
                m["mountPath"] for m in container.get("volumeMounts", []) if not m.get("readOnly")
            }
            assert mounts == {"/tmp", "/data"}, (overlay, deployment["metadata"]["name"])


API_KEYS_SECRET = "rag-pipeline-api-keys"


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("deployment", [API, WORKER])
def test_the_app_reads_its_keys_file_from_a_secret_volume(
    rendered: dict[str, list[Doc]], overlay: str, deployment: str
) -> None:
    """RAG_API_KEYS_FILE lies in a read-only Secret mount without subPath (a subPath mount never
    sees the Secret change, so rotation would need a restart); prod requires the Secret and
    the file, dev runs open. The worker too: its replay endpoints are admin-only, and it reads
    the same ConfigMap (tests/deploy/test_manifests_start.py starts both)."""
    docs = rendered[overlay]
    keys_file = configmap(docs, SETTINGS_CONFIGMAP)["data"]["RAG_API_KEYS_FILE"]
    spec = one(docs, "Deployment", deployment)["spec"]["template"]["spec"]
    volume = next(
        v for v in spec["volumes"] if v.get("secret", {}).get("secretName") == API_KEYS_SECRET
    )
    (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True and "subPath" not in mount
    assert volume["secret"]["defaultMode"] & 0o007 == 0, "keys readable by other users"
    if overlay == "prod":
        assert keys_file.startswith(mount["mountPath"].rstrip("/") + "/")
        assert volume["secret"]["optional"] is False
    else:
        assert keys_file == ""


# --- Probes and resources ----------------------------------------------------------------


def test_every_container_has_probes_and_resources(rendered: dict[str, list[Doc]]) -> None:
    for overlay, doc, spec in _all(rendered):
        for container in containers(spec, init=False):
            where = f"{overlay}:{doc['metadata']['name']}/{container['name']}"
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert probe in container, f"{where} has no {probe}"
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    assert resources.get(kind, {}).get(resource), f"{where}: {kind}.{resource}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_app_probes_check_health_and_readiness(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    """Liveness is the process (/health); readiness is the dependencies (/ready)."""
    for deployment, container in _app_containers(rendered[overlay]):
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"http": 8080}
        for probe, path in (
            ("startupProbe", "/health"),
            ("livenessProbe", "/health"),
            ("readinessProbe", "/ready"),
        ):
            get = container[probe]["httpGet"]
            assert (get["path"], get["port"]) == (path, "http"), (deployment["metadata"], probe)
        # Liveness gives up later than readiness: a slow dependency unreadies, never kills.
        live, ready = container["livenessProbe"], container["readinessProbe"]
        assert live["periodSeconds"] * live["failureThreshold"] >= (
            ready["periodSeconds"] * ready["failureThreshold"]
        )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_app_resources_are_as_in_the_guide(rendered: dict[str, list[Doc]], overlay: str) -> None:
    for deployment, container in _app_containers(rendered[overlay]):
        assert container["resources"] == GUIDE_RESOURCES[deployment["metadata"]["name"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_graceful_shutdown_fits_in_the_grace_period(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    """preStop pause + Hypercorn's drain (RAG_GRACEFUL_TIMEOUT_SECONDS) < the grace period."""
    docs = rendered[overlay]
    settings = configmap(docs, SETTINGS_CONFIGMAP)["data"]
    drain = float(settings["RAG_GRACEFUL_TIMEOUT_SECONDS"])
    api = one(docs, "Deployment", API)["spec"]["template"]["spec"]
    container = api["containers"][0]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pause = float(command[1])
    assert pause >= 3
    assert pause + drain + 5 <= api["terminationGracePeriodSeconds"]
    worker = one(docs, "Deployment", WORKER)["spec"]["template"]["spec"]
    assert drain + 5 <= worker["terminationGracePeriodSeconds"]


# --- Images ------------------------------------------------------------------------------

_IMAGE = re.compile(
    r"^(?P<repo>[^@]+?)(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


def _image_parts(image: str) -> tuple[str, str | None, str | None]:
    match = _IMAGE.match(image)
    assert match, f"unparsable image {image!r}"
    return match["repo"], match["tag"], match["digest"]


def test_no_image_is_latest_or_untagged(rendered: dict[str, list[Doc]]) -> None:
    for target, docs in rendered.items():
        for doc, spec in workloads(docs):
            for container in containers(spec):
                _, tag, digest = _image_parts(container["image"])
                where = f"{target}:{doc['metadata']['name']}/{container['name']}"
                assert tag or digest, f"{where}: {container['image']} has no tag (= latest)"
                assert tag not in MOVING_TAGS, f"{where}: moving tag {tag}"
                assert container.get("imagePullPolicy") == "Always", where


def test_prod_runs_a_pinned_release_of_the_app(rendered: dict[str, list[Doc]]) -> None:
    for _, container in _app_containers(rendered["prod"]):
        repo, tag, digest = _image_parts(container["image"])
        assert repo.endswith("/rag-pipeline")
        assert digest or (tag and re.fullmatch(r"v?\d+\.\d+\.\d+([-+][\w.]+)?", tag)), tag


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_and_worker_run_the_same_image(rendered: dict[str, list[Doc]], overlay: str) -> None:
    images = {c["image"] for _, c in _app_containers(rendered[overlay])}
    assert len(images) == 1
    args = {d["metadata"]["name"]: c.get("args") for d, c in _app_containers(rendered[overlay])}
    assert args == {API: ["serve"], WORKER: ["worker"]}


# --- Settings ----------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmap_keys_are_exactly_the_settings_the_app_reads(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    keys = set(configmap(rendered[overlay], SETTINGS_CONFIGMAP)["data"])
    expected = set(ENV_NAMES) - SECRET_SETTINGS
    assert not keys & SECRET_SETTINGS, f"secrets in a ConfigMap: {keys & SECRET_SETTINGS}"
    assert not expected - keys, f"settings missing from the ConfigMap: {sorted(expected - keys)}"
    assert not keys - expected, f"ConfigMap keys the app does not read: {sorted(keys - expected)}"
    assert {k for k in ENV_NAMES if k.startswith("RAG_")} <= keys


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmap_values_pass_the_apps_own_validation(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    """What the pods will see, parsed by Settings.from_env: a bad value would stop start-up."""
    data = configmap(rendered[overlay], SETTINGS_CONFIGMAP)["data"]
    settings = Settings.from_env({k: v for k, v in data.items() if k in ENV_NAMES} | FAKE_SECRET)
    assert (settings.host, settings.port, settings.data_dir) == ("0.0.0.0", 8080, "/data")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_variables_read_by_libraries_are_never_blank(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    """Blank means "default" only to Settings.from_env; the OpenTelemetry SDK and the openai
    client read their own variables and take an empty string literally."""
    data = configmap(rendered[overlay], SETTINGS_CONFIGMAP)["data"]
    for key, value in data.items():
        if key.startswith("OTEL_") or key.startswith("OPENAI_"):
            assert value.strip(), f"{key} is blank"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_settings_hold_only_differences(overlay: str) -> None:
    """Nor a setting one of its components sets: kustomize applies components after the
    overlay's own configMapGenerator, so the component's value would silently win."""
    base = settings_of(TARGETS["base"])
    by_components = {
        key: component.name
        for component in components_of(TARGETS[overlay])
        for key in settings_of(component)
    }
    for key, value in settings_of(TARGETS[overlay]).items():
        assert key in base, f"{overlay} sets {key}, which the base does not have"
        assert base[key] != value, f"{overlay} repeats the base value of {key}"
        assert key not in by_components, (
            f"{overlay} sets {key}, which its component {by_components.get(key)} sets after it "
            "(components apply after the overlay's configMapGenerator): the overlay's value is "
            "ignored; patch the ConfigMap in the overlay instead"
        )


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_component_settings_hold_only_differences(component: str) -> None:
    base = settings_of(TARGETS["base"])
    settings = settings_of(COMPONENTS[component])
    assert settings, f"{component} sets no setting"
    for key, value in settings.items():
        assert key in base, f"{component} sets {key}, which the base does not have"
        assert base[key] != value, f"{component} repeats the base value of {key}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_settings_are_base_then_overlay_then_components(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    """The order kustomize (v5, as kubectl and Argo CD run it) merges the settings in:
    resources, then the overlay's own generator, then its components, in their order. The
    checks above and the comments in the kustomizations rely on it."""
    expected = settings_of(TARGETS["base"]) | settings_of(TARGETS[overlay])
    for component in components_of(TARGETS[overlay]):
        expected |= settings_of(component)
    assert configmap(rendered[overlay], SETTINGS_CONFIGMAP)["data"] == expected


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_come_only_from_the_secret(rendered: dict[str, list[Doc]], overlay: str) -> None:
    for deployment, container in _app_containers(rendered[overlay]):
        where = f"{overlay}:{deployment['metadata']['name']}"
        env = {e["name"]: e for e in container.get("env", [])}
        for name in SECRET_SETTINGS:
            ref = env[name]["valueFrom"]["secretKeyRef"]
            assert (ref["name"], ref["key"]) == (SECRET, name), where
            assert ref.get("optional", False) is (name not in REQUIRED_SECRETS), where
            assert "value" not in env[name], where
        assert container["envFrom"] == [
            {
                "configMapRef": {
                    "name": configmap(rendered[overlay], SETTINGS_CONFIGMAP)["metadata"]["name"]
                }
            }
        ], where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_variable_a_container_gets_is_a_setting(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    known = set(ENV_NAMES)
    for deployment, container in _app_containers(rendered[overlay]):
        names = {e["name"] for e in container.get("env", [])}
        assert names <= known, f"{deployment['metadata']['name']}: unknown {names - known}"


def test_no_secret_value_is_committed(rendered: dict[str, list[Doc]]) -> None:
    for target, docs in rendered.items():
        assert not find(docs, "Secret"), f"{target} renders a Secret: create it in the cluster"


# --- Availability and scaling ------------------------------------------------------------


def test_prod_scales_the_api_from_3_to_12_on_cpu_memory_and_requests(
    rendered: dict[str, list[Doc]],
) -> None:
    docs = rendered["prod"]
    hpa = one(docs, "HorizontalPodAutoscaler", API)["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 12)
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": API}
    resources = {m["resource"]["name"] for m in hpa["metrics"] if m["type"] == "Resource"}
    pods = [m["pods"]["metric"]["name"] for m in hpa["metrics"] if m["type"] == "Pods"]
    assert resources == {"cpu", "memory"}
    assert pods == ["rag_requests_per_second"]
    assert "replicas" not in one(docs, "Deployment", API)["spec"], "the HPA owns replicas"


def test_prod_keeps_two_api_pods_through_disruptions(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["prod"]
    pdb = one(docs, "PodDisruptionBudget", API)["spec"]
    assert pdb["minAvailable"] == 2 and "maxUnavailable" not in pdb
    assert label_match(pdb["selector"], pod_labels(one(docs, "Deployment", API)))
    assert not label_match(pdb["selector"], pod_labels(one(docs, "Deployment", WORKER)))


def test_dev_runs_one_replica_of_everything(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["dev"]
    assert not find(docs, "HorizontalPodAutoscaler")
    for doc, _ in workloads(docs):
        assert doc["spec"].get("replicas") == 1, doc["metadata"]["name"]


def test_dev_is_self_contained(rendered: dict[str, list[Doc]]) -> None:
    """Redis (append-only file on a persistent volume), Qdrant (StatefulSet with a volume) and a
    Jaeger receiving OTLP, each behind the Service the settings point at."""
    docs = rendered["dev"]
    settings = configmap(docs, SETTINGS_CONFIGMAP)["data"]
    redis = one(docs, "StatefulSet", "redis")
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    qdrant = one(docs, "StatefulSet", "qdrant")
    assert qdrant["spec"]["volumeClaimTemplates"]
    assert {p["port"] for p in one(docs, "Service", "qdrant")["spec"]["ports"]} == {6333, 6334}
    assert settings["QDRANT_URL"] == "http://qdrant:6333"
    assert {p["port"] for p in one(docs, "Service", "jaeger")["spec"]["ports"]} >= {4317, 4318}
    assert settings["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317"
    assert {p["port"] for p in one(docs, "Service", "redis")["spec"]["ports"]} == {6379}
    # One Redis server: REDIS_URL alone (docs/deploy.md, section 4), nothing to wait for.
    topology = (
        "REDIS_SENTINELS",
        "REDIS_SENTINEL_MASTER",
        "REDIS_CLUSTER",
        "RAG_REDIS_MIN_REPLICAS",
    )
    assert not any(settings[key] for key in topology)


def test_prod_uses_external_backends(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["prod"]
    assert not find(docs, "StatefulSet")
    settings = configmap(docs, SETTINGS_CONFIGMAP)["data"]
    assert not settings["QDRANT_URL"].startswith("http://qdrant:")
    assert "jaeger" not in settings["OTEL_EXPORTER_OTLP_ENDPOINT"]
    assert settings["RAG_EVENT_REDACT_QUERIES"] == "true"
    # Redis behind Sentinels, and no request acknowledged before a replica has its events.
    assert parse_sentinels(settings["REDIS_SENTINELS"]) and settings["REDIS_SENTINEL_MASTER"]
    assert settings["RAG_REDIS_MIN_REPLICAS"] == "1"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_app_pods_spread_over_nodes_and_zones(rendered: dict[str, list[Doc]], overlay: str) -> None:
    for name in (API, WORKER):
        deployment = one(rendered[overlay], "Deployment", name)
        spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert {c["topologyKey"] for c in spread} == {
            "kubernetes.io/hostname",
            "topology.kubernetes.io/zone",
        }
        for constraint in spread:
            assert label_match(constraint["labelSelector"], pod_labels(deployment))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_and_budgets_select_existing_pods(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    pods = [(d["metadata"]["name"], pod_labels(d)) for d, _ in workloads(docs)]
    for service in find(docs, "Service"):
        selector = {"matchLabels": service["spec"]["selector"]}
        assert any(label_match(selector, labels) for _, labels in pods), service["metadata"]
    for pdb in find(docs, "PodDisruptionBudget"):
        assert any(label_match(pdb["spec"]["selector"], labels) for _, labels in pods)
    for hpa in find(docs, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        one(docs, ref["kind"], ref["name"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_servicemonitor_scrapes_api_and_workers(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    monitor = one(docs, "ServiceMonitor", "rag-pipeline")["spec"]
    scraped = [
        s
        for s in find(docs, "Service")
        if label_match(monitor["selector"], s["metadata"].get("labels", {}))
    ]
    assert {s["metadata"]["name"] for s in scraped} == {API, WORKER}
    ports = {e["port"] for e in monitor["endpoints"]}
    assert {e["path"] for e in monitor["endpoints"]} == {"/metrics"}
    for service in scraped:
        assert ports <= {p["name"] for p in service["spec"]["ports"]}


# --- Network policy ----------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_is_default_deny(rendered: dict[str, list[Doc]], overlay: str) -> None:
    deny = one(rendered[overlay], "NetworkPolicy", "default-deny")["spec"]
    assert deny["podSelector"] == {}
    assert set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert not deny.get("ingress") and not deny.get("egress")


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize(
    ("port", "protocol", "what"),
    [
        (53, "UDP", "DNS"),
        (53, "TCP", "DNS"),
        (6379, "TCP", "Redis"),
        (26379, "TCP", "Redis Sentinel"),
        (6333, "TCP", "Qdrant REST"),
        (6334, "TCP", "Qdrant gRPC"),
        (4317, "TCP", "OTLP gRPC"),
        (4318, "TCP", "OTLP HTTP"),
        (443, "TCP", "HTTPS (embeddings API)"),
    ],
)
def test_app_egress_is_allowed_where_it_must_go(
    rendered: dict[str, list[Doc]], overlay: str, port: int, protocol: str, what: str
) -> None:
    docs = rendered[overlay]
    for name in (API, WORKER):
        assert allows(egress_of(docs, name), port, protocol), (
            f"{overlay}: {name} cannot reach {what}"
        )


def sentinel_ports_blocked(docs: list[Doc]) -> tuple[set[int], list[str]]:
    """The ports the rendered REDIS_SENTINELS names, and which API or worker pods the
    NetworkPolicies keep from them."""
    data = configmap(docs, SETTINGS_CONFIGMAP)["data"]
    ports = {port for _, port in parse_sentinels(data.get("REDIS_SENTINELS", ""))}
    blocked = [
        f"{name} -> {port}"
        for name in (API, WORKER)
        for port in sorted(ports)
        if not allows(egress_of(docs, name), port)
    ]
    return ports, blocked


def test_app_egress_reaches_every_sentinel_the_settings_name(
    rendered: dict[str, list[Doc]],
) -> None:
    """The Sentinels' ports come from the rendered REDIS_SENTINELS, not from this test: a
    Sentinel moved to another port must be admitted too (test_components.py checks the
    components on their own)."""
    checked = set()
    for overlay in OVERLAYS:
        ports, blocked = sentinel_ports_blocked(rendered[overlay])
        assert not blocked, f"{overlay}: egress blocked {blocked}"
        checked |= ports
    assert checked, "no overlay names Sentinels: prod runs on the redis-sentinel component"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_app_egress_allows_nothing_else(rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    labels = pod_labels(one(docs, "Deployment", API))
    egress = [r for p in policies_for(docs, labels) for r in p["spec"].get("egress", [])]
    for port in (22, 25, 80, 5432, 8080, 9090):
        assert not allows(egress, port), f"egress to {port} is open"
    assert not allows(egress, 6379, "UDP")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_app_ingress_from_the_namespace_and_monitoring(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    labels = pod_labels(one(docs, "Deployment", API))
    ingress = [r for p in policies_for(docs, labels) for r in p["spec"].get("ingress", [])]
    named = {"http": 8080}
    peers: list[dict[str, Any]] = [
        peer for r in ingress if allows([r], 8080, named=named) for peer in r.get("from", [])
    ]
    assert {"podSelector": {}} in peers
    assert {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    } in peers
    assert not allows(ingress, 22, named=named)


def test_dev_backing_services_accept_the_app_and_nothing_else(
    rendered: dict[str, list[Doc]],
) -> None:
    docs = rendered["dev"]
    app_labels = pod_labels(one(docs, "Deployment", API))
    for name, ports in (("redis", [6379]), ("qdrant", [6333, 6334]), ("jaeger", [4317, 4318])):
        workload = (find(docs, "StatefulSet", name) + find(docs, "Deployment", name))[0]
        ingress = [
            r
            for p in policies_for(docs, pod_labels(workload))
            for r in p["spec"].get("ingress", [])
        ]
        for port in ports:
            rules = [r for r in ingress if allows([r], port)]
            assert any(
                label_match(peer["podSelector"], app_labels)
                for r in rules
                for peer in r.get("from", [])
                if "podSelector" in peer
            ), f"rag-pipeline cannot reach {name}:{port}"
        assert not allows(ingress, 22)


# --- Argo CD -----------------------------------------------------------------------------


def test_sync_waves_order_configuration_workers_api(rendered: dict[str, list[Doc]]) -> None:
    for overlay in OVERLAYS:
        docs = rendered[overlay]
        config = [
            d
            for d in docs
            if d["kind"] in {"ConfigMap", "ServiceAccount", "Service", "NetworkPolicy"}
        ]
        worker = sync_wave(one(docs, "Deployment", WORKER))
        api = sync_wave(one(docs, "Deployment", API))
        assert max(sync_wave(d) for d in config) < worker < api, overlay
        assert sync_wave(one(docs, "Namespace", NAMESPACES[overlay])) < min(
            sync_wave(d) for d in config
        )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_overlays_image_setting_takes_effect(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    """`kustomize edit set image rag-pipeline=...` in an overlay is how a release rolls out: the
    entry must match the image name the base uses, or it is silently ignored."""
    entries = [
        i
        for i in load_yaml(TARGETS[overlay] / "kustomization.yaml")["images"]
        if i["name"] == "rag-pipeline"
    ]
    assert len(entries) == 1
    wanted = f"{entries[0]['newName']}:{entries[0]['newTag']}"
    if entries[0].get("digest"):
        wanted = f"{entries[0]['newName']}@{entries[0]['digest']}"
    for _, container in _app_containers(rendered[overlay]):
        assert container["image"] == wanted
