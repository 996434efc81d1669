"""The Redis components (kustomize/components): each renders on the base and in the prod overlay
in place of the one prod uses (as the overlay's comment tells the operator to switch), changes
nothing but the settings ConfigMap, and gives settings the app accepts.

A Component cannot be built on its own, so each is rendered through a Kustomization written to
a temporary directory outside the repository, naming the real base, overlay files and
components by relative path (kustomize refuses absolute ones).
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable

import pytest

from app.settings import ENV_NAMES, Settings, hash_tag, parse_sentinels
from tests.deploy._support import (
    COMPONENTS,
    FAKE_SECRET,
    SECRET,
    SETTINGS_CONFIGMAP,
    TARGETS,
    Doc,
    components_of,
    configmap,
    load_yaml,
    render_overlay,
    settings_of,
)
from tests.deploy.test_policy import SECRET_SETTINGS, sentinel_ports_blocked

Renders = dict[str, tuple[list[Doc], str]]


def _sentinel(settings: Settings) -> None:
    assert parse_sentinels(settings.redis_sentinels), "no Sentinels"
    assert settings.redis_sentinel_master
    assert not settings.redis_cluster
    assert settings.redis_min_replicas == 1


def _cluster(settings: Settings) -> None:
    assert settings.redis_cluster is True
    assert hash_tag(settings.stream_prefix) is not None, settings.stream_prefix
    assert not settings.redis_sentinels and not settings.redis_sentinel_master
    assert settings.redis_min_replicas == 1


# What each component must amount to, beyond passing Settings.from_env.
EXPECTED: dict[str, Callable[[Settings], None]] = {
    "redis-sentinel": _sentinel,
    "redis-cluster": _cluster,
}


@pytest.fixture(scope="module")
def on_base(kubectl: str, tmp_path_factory: pytest.TempPathFactory) -> Renders:
    """component -> the base with that component alone."""
    return {
        name: render_overlay(
            kubectl,
            tmp_path_factory.mktemp(f"base-with-{name}"),
            {"resources": [TARGETS["base"]], "components": [path]},
        )
        for name, path in COMPONENTS.items()
    }


@pytest.fixture(scope="module")
def in_prod(kubectl: str, tmp_path_factory: pytest.TempPathFactory) -> Renders:
    """component -> the prod overlay with its component replaced by that one: a copy of the
    overlay's files, its directory entries pointed back at the real directories."""
    prod = TARGETS["prod"]
    kustomization = load_yaml(prod / "kustomization.yaml")
    renders = {}
    for name, path in COMPONENTS.items():
        directory = tmp_path_factory.mktemp(f"prod-with-{name}")
        for item in prod.iterdir():
            if item.is_file() and item.name != "kustomization.yaml":
                shutil.copy(item, directory / item.name)
        fields = copy.deepcopy(kustomization)
        del fields["apiVersion"], fields["kind"]
        fields["resources"] = [
            (prod / entry).resolve() if (prod / entry).is_dir() else entry
            for entry in fields["resources"]
        ]
        fields["components"] = [path]
        renders[name] = render_overlay(kubectl, directory, fields)
    return renders


def _settings(docs: list[Doc]) -> dict[str, str]:
    return configmap(docs, SETTINGS_CONFIGMAP)["data"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_a_component_is_a_settings_merge_with_its_instructions(component: str) -> None:
    """A Component that only merges settings, headed by what it is for and what the operator
    puts in the Secret."""
    path = COMPONENTS[component] / "kustomization.yaml"
    kustomization = load_yaml(path)
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1alpha1"
    assert kustomization["kind"] == "Component"
    assert set(kustomization) == {"apiVersion", "kind", "configMapGenerator"}
    (generator,) = kustomization["configMapGenerator"]
    assert (generator["name"], generator["behavior"]) == (SETTINGS_CONFIGMAP, "merge")
    header = path.read_text().split("apiVersion:")[0]
    assert header.startswith("#") and SECRET in header and "REDIS_URL" in header


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_a_component_renders_without_warnings(
    on_base: Renders, in_prod: Renders, component: str
) -> None:
    for renders in (on_base, in_prod):
        docs, warnings = renders[component]
        assert docs and warnings.strip() == ""


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_a_component_changes_only_the_settings(
    rendered: dict[str, list[Doc]], on_base: Renders, component: str
) -> None:
    """Every other object as the base renders it (the ConfigMap's hashed name aside), and
    the settings differ exactly where the component's files say."""
    base, docs = rendered["base"], on_base[component][0]
    before, after = configmap(base, SETTINGS_CONFIGMAP), configmap(docs, SETTINGS_CONFIGMAP)

    def others(found: list[Doc], name: str) -> list[str]:
        return sorted(
            repr(d).replace(name, SETTINGS_CONFIGMAP) for d in found if d["kind"] != "ConfigMap"
        )

    assert others(docs, after["metadata"]["name"]) == others(base, before["metadata"]["name"])
    changed = {k for k in after["data"] if after["data"][k] != before["data"].get(k)}
    assert changed == set(settings_of(COMPONENTS[component]))
    assert after["metadata"]["name"] != before["metadata"]["name"], "pods would not roll"


@pytest.mark.parametrize("where", ["on the base", "in prod"])
@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_component_settings_pass_the_apps_validation(
    on_base: Renders, in_prod: Renders, component: str, where: str
) -> None:
    """Every setting and no secret, and what the pods will see (with the Secret's REDIS_URL)
    accepted by Settings.from_env: on a cluster, REDIS_CLUSTER with a hash-tagged prefix."""
    data = _settings((on_base if where == "on the base" else in_prod)[component][0])
    assert set(data) == set(ENV_NAMES) - SECRET_SETTINGS
    settings = Settings.from_env(data | FAKE_SECRET)
    EXPECTED[component](settings)


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_prod_keeps_its_own_settings_with_either_component(
    in_prod: Renders, component: str
) -> None:
    data = _settings(in_prod[component][0])
    for key, value in settings_of(TARGETS["prod"]).items():
        assert data[key] == value, key


def test_prod_uses_the_sentinel_component() -> None:
    """The one in_prod replaces: if prod changes component, the switch above is retold."""
    assert components_of(TARGETS["prod"]) == [COMPONENTS["redis-sentinel"].resolve()]


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_component_egress_reaches_its_sentinels(
    on_base: Renders, in_prod: Renders, component: str
) -> None:
    """Each port the rendered REDIS_SENTINELS names is open to the API and worker pods."""
    for renders in (on_base, in_prod):
        ports, blocked = sentinel_ports_blocked(renders[component][0])
        assert not blocked, blocked
        assert bool(ports) is (component == "redis-sentinel")


def test_the_cluster_component_moves_the_prefix(rendered: dict[str, list[Doc]]) -> None:
    """Its keys live under another prefix than the base's, which is why docs/deploy.md asks
    for the data to be moved first; the base's own prefix has no hash tag."""
    base_prefix = _settings(rendered["base"])["RAG_STREAM_PREFIX"]
    assert hash_tag(base_prefix) is None
    assert settings_of(COMPONENTS["redis-cluster"])["RAG_STREAM_PREFIX"] != base_prefix
