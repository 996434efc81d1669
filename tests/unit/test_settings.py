"""Settings: defaults, parsing, errors that name the variable, and the README table."""

from __future__ import annotations

import pytest

from app.errors import SettingsError
from app.settings import ENV_NAMES, Settings, settings_table
from tests.conftest import ROOT


def test_defaults_need_nothing() -> None:
    settings = Settings.from_env({})
    assert settings.top_k == 10
    assert settings.rerank is True
    assert settings.data_path.is_absolute()


def test_values_are_parsed_from_strings() -> None:
    settings = Settings.from_env(
        {"RAG_TOP_K": "25", "RAG_RERANK": "false", "RAG_MIN_SCORE": "0.3", "LOG_LEVEL": "DEBUG",
         "RAG_METADATA_INDEXES": "source:keyword, year:integer", "UNRELATED": "x"}
    )
    assert (settings.top_k, settings.rerank, settings.min_score) == (25, False, 0.3)
    assert settings.metadata_index_fields() == {"source": "keyword", "year": "integer"}


def test_empty_values_mean_unset() -> None:
    assert Settings.from_env({"RAG_TOP_K": "  "}).top_k == 10


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"RAG_BATCH_SIZE": "lots"}, "RAG_BATCH_SIZE"),
        ({"RAG_BATCH_SIZE": "0"}, "RAG_BATCH_SIZE"),
        ({"RAG_TOP_K": "101"}, "RAG_TOP_K"),
        ({"RAG_RERANK": "maybe"}, "RAG_RERANK"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"RAG_PORT": "70000"}, "RAG_PORT"),
        ({"RAG_MIN_SCORE": "1.5"}, "RAG_MIN_SCORE"),
        ({"RAG_METADATA_INDEXES": "year:date"}, "RAG_METADATA_INDEXES"),
        ({"RAG_CHUNK_SIZE": "64", "RAG_CHUNK_OVERLAP": "64"}, "RAG_CHUNK_OVERLAP"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env)
    assert str(err.value).startswith(name)


def test_settings_are_frozen() -> None:
    settings = Settings.from_env({})
    with pytest.raises(AttributeError):
        settings.top_k = 3  # type: ignore[misc]


def test_readme_table_matches_the_code() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- settings-table:start -->") + len("<!-- settings-table:start -->")
    end = readme.index("<!-- settings-table:end -->")
    assert readme[start:end].strip() == settings_table()
    assert all(f"`{name}`" in readme for name in ENV_NAMES)
