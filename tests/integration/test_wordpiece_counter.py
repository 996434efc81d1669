"""The chunker's fast WordPiece counter gives the tokenizer's own count on every text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from app.adapters.embedders.wordpiece import WordPieceCounter, counting_tokenizer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return counting_tokenizer((ROOT / "app" / "assets" / "minilm-tokenizer.json").read_text())


def reference(tokenizer: Tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


# Mostly plain ASCII (the fast path), with what must leave it: accents, CJK, Unicode
# punctuation and spaces, control characters, the added tokens, and words past WordPiece's
# 100-character limit.
_pieces = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
    st.sampled_from(
        [" ", "\n", "\t", "\r", "\x0b", "\x0c", "\x00", "[SEP]", "[sep]", "[MASK]x", "_", "'s"]
    ),
    st.sampled_from(
        ["café", "naïve", "北京", "\u03b1-helix", "—", "“q”", "\u00a0", "\u2009", "μM"]
    ),
    st.just("x" * 101),
    st.text(max_size=8),
)


@settings(max_examples=600, deadline=None)
@given(st.lists(_pieces, max_size=12).map("".join))
def test_equals_the_tokenizer_on_generated_text(tokenizer: Tokenizer, text: str) -> None:
    assert WordPieceCounter(tokenizer)(text) == reference(tokenizer, text)


def test_the_word_cache_is_bounded_and_stays_exact(tokenizer: Tokenizer) -> None:
    count = WordPieceCounter(tokenizer, max_cached_words=3)
    texts = ["alpha beta gamma", "delta epsilon", "alpha zeta eta theta", "beta beta"] * 3
    assert [count(t) for t in texts] == [reference(tokenizer, t) for t in texts]
    assert len(count._words) <= 3


@pytest.mark.slow
def test_equals_the_tokenizer_on_the_scifact_corpus(tokenizer: Tokenizer, scifact: Path) -> None:
    count = WordPieceCounter(tokenizer)
    for line in (scifact / "corpus.jsonl").read_text().splitlines():
        doc = json.loads(line)
        for text in (doc["title"], *doc["text"].split(". ")):
            assert count(text) == reference(tokenizer, text), text
