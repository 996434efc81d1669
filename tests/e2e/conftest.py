"""A real server on a free port with a small corpus loaded, shared by the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import PREFIXES, Server, drop_keys

# Words the kill and failover tests make documents of: short texts, each document its own.
WORDS = [
    "river",
    "mountain",
    "glacier",
    "desert",
    "forest",
    "ocean",
    "volcano",
    "canyon",
    "meadow",
    "island",
    "valley",
    "storm",
    "thunder",
    "comet",
    "planet",
    "orbit",
    "crystal",
    "mineral",
    "fossil",
    "coral",
    "tide",
    "harbor",
    "lantern",
    "compass",
    "quartz",
    "basalt",
    "granite",
    "marble",
    "willow",
    "cedar",
    "falcon",
    "heron",
    "otter",
    "badger",
    "lynx",
]

DOCS = [
    {
        "id": "volcano",
        "title": "Volcanoes",
        "text": "A volcano is a rupture in the crust of a planet through which lava, volcanic ash "
        "and gases escape from a magma chamber below the surface.",
        "metadata": {"topic": "geology", "year": 2001, "tags": ["earth", "hazard"]},
    },
    {
        "id": "photosynthesis",
        "title": "Photosynthesis",
        "text": "Photosynthesis is the process by which green plants use sunlight, water and "
        "carbon dioxide to make glucose and release oxygen, inside chloroplasts.",
        "metadata": {"topic": "biology", "year": 2010, "tags": ["plants"]},
    },
    {
        "id": "tcp",
        "title": "Transmission Control Protocol",
        "text": "TCP provides reliable, ordered delivery of a stream of bytes between applications "
        "over an IP network, with retransmission and congestion control.",
        "metadata": {"topic": "networking", "year": 2015, "tags": ["internet"]},
    },
    {
        "id": "insulin",
        "title": "Insulin",
        "text": "Insulin is a peptide hormone produced by beta cells of the pancreatic islets; it "
        "regulates the metabolism of carbohydrates by promoting glucose uptake.",
        "metadata": {"topic": "biology", "year": 2020, "tags": ["hormone", "medicine"]},
    },
    {
        "id": "guide.md",
        "title": "Operations guide",
        "text": "# Install\n\nRun the installer on a fresh machine.\n\n## Linux\n\nUse the package "
        "manager to install the service and enable it at boot.\n\n# Backup\n\nSnapshots of "
        "the data directory are taken nightly and kept for thirty days.",
        "metadata": {"topic": "ops", "year": 2023},
    },
]


@pytest.fixture(scope="session", autouse=True)
def _drop_server_keys() -> Iterator[None]:
    """Delete what the servers wrote to the machine's Redis, once they have all stopped."""
    yield
    drop_keys(PREFIXES)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from loaded_server(tmp_path_factory.mktemp("e2e") / "data")


def loaded_server(data_dir: Path, env: dict[str, str] | None = None) -> Iterator[Server]:
    """A started server holding DOCS (indexed), stopped when the generator is closed."""
    srv = Server(data_dir, env=env).start()
    try:
        response = httpx.post(
            f"{srv.url}/api/v1/ingest?wait=true", json={"documents": DOCS}, timeout=120
        )
        assert response.status_code == 200, response.text
        assert {d["status"] for d in response.json()["documents"]} == {"indexed"}
        yield srv
    finally:
        srv.stop()


@pytest.fixture()
def http(server: Server) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"
