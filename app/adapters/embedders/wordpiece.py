"""Counts a BERT WordPiece tokenizer's tokens for the chunker, word by word with a cache."""

from __future__ import annotations

import re

from tokenizers import Tokenizer

# BERT's normaliser maps tab, newline and carriage return to spaces.
_TO_SPACE = str.maketrans("\t\n\r", "   ")
# On plain ASCII, BERT's normaliser only lower-cases and its pre-tokeniser isolates every
# ASCII punctuation character (every printable non-alphanumeric).
_ASCII_WORDS = re.compile(r"[a-z0-9]+|[^a-z0-9]")


class WordPieceCounter:
    """`count(text)` = len(tokenizer.encode(text, add_special_tokens=False)), untruncated.

    The tokenizer's Python binding costs ~0.8 us per character (80 us for a sentence), and
    the chunker counts every sentence of every document it applies: that was a quarter of a
    replay's time. BERT's normaliser (lower case, accents, CJK, control characters) acts on
    each character alone, and its pre-tokeniser splits at whitespace first, so a text's count
    is the sum of its space-separated words' counts once the text holds no control, format
    or unassigned character and no whitespace but space, tab, newline and carriage return
    (then it passes str.isprintable with those three mapped to spaces). Words repeat, so each
    distinct word is counted once: an ASCII word by splitting it here and running the
    WordPiece model on the pieces, any other word by the tokenizer. Other texts, and texts
    holding an added token such as "[SEP]" (matched in the raw text as one token), go to the
    tokenizer whole. A test holds the result equal to the tokenizer's on generated text and
    on every sentence of SciFact.
    """

    def __init__(self, tokenizer: Tokenizer, *, max_cached_words: int = 200_000) -> None:
        self._tokenizer = tokenizer
        self._model = tokenizer.model
        # A piece that is itself in the vocabulary is one token (WordPiece takes the longest
        # known prefix first): most pieces are, and the lookup saves a call to the model.
        self._vocab = frozenset(tokenizer.get_vocab())
        self._words: dict[str, int] = {}
        self._max_cached_words = max_cached_words
        self._added = tuple(t.content for t in tokenizer.get_added_tokens_decoder().values())

    def __call__(self, text: str) -> int:
        if "[" in text and any(t in text for t in self._added):
            return self._encode(text)
        if not text.isprintable() and not text.translate(_TO_SPACE).isprintable():
            return self._encode(text)
        words = text.split()
        try:
            return sum(map(self._words.__getitem__, words))
        except KeyError:
            return sum(self._word(w) for w in words)

    def _word(self, word: str) -> int:
        n = self._words.get(word)
        if n is None:
            if word.isascii():
                n = sum(
                    1 if piece in self._vocab else len(self._model.tokenize(piece))
                    for piece in _ASCII_WORDS.findall(word.lower())
                )
            else:
                n = self._encode(word)
            if len(self._words) >= self._max_cached_words:
                # Bounded memory for corpora with endless distinct words (ids, hashes).
                self._words.clear()
            self._words[word] = n
        return n

    def _encode(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False))


def counting_tokenizer(tokenizer_json: str) -> Tokenizer:
    """A tokenizer configured for counting: no padding, no truncation. Its own instance,
    since truncation is per-instance state that must not change while others encode."""
    tokenizer = Tokenizer.from_str(tokenizer_json)
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer
