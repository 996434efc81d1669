"""Counts a BERT WordPiece tokenizer's tokens for the chunker, fast on plain ASCII text."""

from __future__ import annotations

import re

from tokenizers import Tokenizer

# Text the fast path handles exactly: printable ASCII, space, tab, newline, carriage return.
# On it, BERT's normaliser only lower-cases and its pre-tokeniser splits at whitespace and
# isolates every ASCII punctuation character (every printable non-alphanumeric), so the
# words are what _WORDS finds. Anything else (accents, CJK, control characters, Unicode
# punctuation) goes through the tokenizer itself, and so does text holding an added token
# such as "[SEP]", which the tokenizer matches in the raw text as one token.
_PLAIN = re.compile(r"[\x20-\x7e\t\n\r]*")
_WORDS = re.compile(r"[a-z0-9]+|[^a-z0-9\s]")


class WordPieceCounter:
    """`count(text)` = len(tokenizer.encode(text, add_special_tokens=False)), without
    truncation.

    The tokenizer's Python binding costs ~0.8 us per character (80 us for a sentence), and
    the chunker counts every sentence of every document it applies: that was a quarter of a
    replay's time. A sentence's count is the sum of its words' counts, and words repeat, so
    plain-ASCII text is split here and each distinct word is run through the WordPiece model
    once. A test holds the result equal to the tokenizer's over the SciFact corpus and over
    generated text.
    """

    def __init__(self, tokenizer: Tokenizer, *, max_cached_words: int = 200_000) -> None:
        self._tokenizer = tokenizer
        self._model = tokenizer.model
        self._words: dict[str, int] = {}
        self._max_cached_words = max_cached_words
        self._added = tuple(t.content for t in tokenizer.get_added_tokens_decoder().values())

    def __call__(self, text: str) -> int:
        if _PLAIN.fullmatch(text) is None or any(t in text for t in self._added):
            return len(self._tokenizer.encode(text, add_special_tokens=False))
        words = self._words
        total = 0
        for word in _WORDS.findall(text.lower()):
            n = words.get(word)
            if n is None:
                n = len(self._model.tokenize(word))
                if len(words) >= self._max_cached_words:
                    # Bounded memory for corpora with endless distinct tokens (ids, hashes).
                    words.clear()
                words[word] = n
            total += n
        return total


def counting_tokenizer(tokenizer_json: str) -> Tokenizer:
    """A tokenizer configured for counting: no padding, no truncation. Its own instance,
    since truncation is per-instance state that must not change while others encode."""
    tokenizer = Tokenizer.from_str(tokenizer_json)
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer
