"""Split a document into token-bounded chunks along Markdown sections, paragraphs and sentences."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

import msgspec

# How finely a piece was cut; a piece can be re-cut one level finer when it does not fit.
_PARAGRAPH, _SENTENCE, _WORD, _SLICE = range(4)

# CommonMark ATX heading: up to 3 spaces of indent, 1-6 '#', then a space or the end of line
# ("#hashtag" and "#5" are text, not headings).
_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t]*$")
_CLOSING_HASHES = re.compile(r"(?:^|[ \t]+)#+$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
# A sentence ends at . ! or ? (plus closing quotes or brackets) followed by a space and a
# character that is not lower case, so "e.g. the" and "0.05" stay whole; a line break inside a
# paragraph (list items, table rows) is a boundary too.
_SENTENCE_BOUNDARY = re.compile(r"[.!?][\"'\u201d\u2019)\]]*( )(?=[^\sa-z])|(\n)")


class ChunkText(msgspec.Struct, frozen=True):
    """One chunk: its own text, the heading path above it, and the text to embed and index."""

    text: str
    section: list[str]
    embed_text: str


class _Piece(NamedTuple):
    sep: str  # whitespace that joins it to the piece before it: "\n\n", "\n", " " or ""
    text: str
    tokens: int
    level: int


def chunk_document(
    text: str,
    *,
    title: str,
    size: int,
    overlap: int,
    count_tokens: Callable[[str], int],
) -> list[ChunkText]:
    """Chunks of at most `size` tokens of embed_text, `overlap` tokens carried between them.

    The title and section lines of embed_text count against `size`, but leave the text at
    least size // 2 tokens, so only a very long title or heading path can exceed `size`.
    Headings start a new chunk and give its section path. Within a section, paragraphs are
    packed greedily; one that does not fit is cut into sentences, then words, then (for
    whitespace-free runs longer than a chunk) character slices. Token counts of pieces are
    summed rather than recounted after joining: exact for whitespace-split tokenizers such as
    WordPiece, an approximation elsewhere.
    """
    if size < 1 or overlap < 0 or overlap >= size:
        raise ValueError(f"need size >= 1 and 0 <= overlap < size, got {size=} {overlap=}")
    if not text.strip():
        return []
    title = " ".join(title.split())
    packer = _Packer(count_tokens)
    sections = _sections(text)
    if not any(paragraphs for _, paragraphs in sections):
        # Only headings: index them as text, so every non-blank document has a chunk.
        headings = list(dict.fromkeys(path[-1] for path, _ in sections if path))
        sections = [([], headings or [" ".join(text.split())])]

    chunks: list[ChunkText] = []
    for path, paragraphs in sections:
        if not paragraphs:
            continue
        prefix = "\n".join(x for x in [title, " > ".join(path)] if x)
        # The model truncates at its window, so the prefix eats into the text's budget; a
        # floor keeps chunks useful when titles are very long.
        budget = max(size - (packer.count(prefix) if prefix else 0), size // 2, 1)
        # Overlap beyond half the budget would make each chunk advance by less than it repeats.
        carry = min(overlap, budget // 2)
        pieces = [packer.paragraph(p) for p in paragraphs]
        for group in packer.pack(pieces, budget, carry):
            body = "".join(p.sep + p.text for p in group)[len(group[0].sep) :]
            embed = "\n".join(x for x in [prefix, body] if x)
            chunks.append(ChunkText(text=body, section=list(path), embed_text=embed))
    return chunks


def _sections(text: str) -> list[tuple[list[str], list[str]]]:
    """(heading path, normalised paragraphs) for each run of text between headings."""
    sections: list[tuple[list[str], list[str]]] = []
    stack: list[tuple[int, str]] = []
    paragraphs: list[str] = []
    lines: list[str] = []
    fence: str | None = None  # the opening fence while inside a code block

    def end_paragraph() -> None:
        if lines:
            paragraphs.append("\n".join(lines))
            lines.clear()

    for raw in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        line = " ".join(raw.split())
        fence_match = _FENCE.match(raw)
        if fence is not None:
            closes = (
                fence_match is not None
                and fence_match.group(1)[0] == fence[0]
                and len(fence_match.group(1)) >= len(fence)
                and not raw[fence_match.end() :].strip()
            )
            if closes:
                fence = None
        elif fence_match is not None and not (
            # A backtick fence's info string cannot hold backticks: "```x```" is inline code.
            fence_match.group(1)[0] == "`" and "`" in raw[fence_match.end() :]
        ):
            fence = fence_match.group(1)
        elif (heading := _HEADING.match(raw)) is not None:
            end_paragraph()
            sections.append(([name for _, name in stack if name], paragraphs))
            paragraphs = []
            level = len(heading.group(1))
            name = _CLOSING_HASHES.sub("", heading.group(2) or "").strip()
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, " ".join(name.split())))
            continue
        if line:
            lines.append(line)
        else:
            end_paragraph()
    end_paragraph()
    sections.append(([name for _, name in stack if name], paragraphs))
    return sections


class _Packer:
    """Cuts and packs one document's pieces, counting each distinct text once."""

    def __init__(self, count_tokens: Callable[[str], int]) -> None:
        self._count_tokens = count_tokens
        self._counts: dict[str, int] = {}
        self._sentences: dict[str, list[_Piece]] = {}

    def count(self, text: str) -> int:
        n = self._counts.get(text)
        if n is None:
            n = self._counts[text] = self._count_tokens(text)
        return n

    def paragraph(self, text: str) -> _Piece:
        """A paragraph piece, counted as the sum of its sentences.

        Counting is most of the cost of chunking, so each sentence is counted once and the
        sentences are kept for when the paragraph has to be cut.
        """
        parts: list[tuple[str, str]] = []
        start, sep = 0, "\n\n"
        for m in _SENTENCE_BOUNDARY.finditer(text):
            cut = m.start(1) if m.group(1) is not None else m.start(2)
            parts.append((sep, text[start:cut]))
            start, sep = cut + 1, m.group(1) or m.group(2)
        parts.append((sep, text[start:]))
        sentences = [_Piece(s, t, self.count(t), _SENTENCE) for s, t in parts]
        self._sentences[text] = sentences
        return _Piece("\n\n", text, sum(p.tokens for p in sentences), _PARAGRAPH)

    def finer(self, piece: _Piece, budget: int) -> list[_Piece]:
        """The piece cut one level finer; the first part keeps the piece's separator."""
        if piece.level == _PARAGRAPH:
            sentences = self._sentences[piece.text]
            if len(sentences) == 1:
                return [piece._replace(level=_SENTENCE)]
            return [sentences[0]._replace(sep=piece.sep), *sentences[1:]]
        if piece.level == _SENTENCE:
            words = piece.text.split(" ")
            if len(words) == 1:
                return [piece._replace(level=_WORD)]
            seps = [piece.sep] + [" "] * (len(words) - 1)
            return [_Piece(s, w, self.count(w), _WORD) for s, w in zip(seps, words, strict=True)]
        # A word longer than the budget (a URL, a hash, base64): longest prefixes that fit.
        slices: list[_Piece] = []
        rest, sep = piece.text, piece.sep
        while rest:
            lo, hi = 1, len(rest)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if self.count(rest[:mid]) <= budget:
                    lo = mid
                else:
                    hi = mid - 1
            slices.append(_Piece(sep, rest[:lo], self.count(rest[:lo]), _SLICE))
            rest, sep = rest[lo:], ""
        return slices

    def tail(self, pieces: list[_Piece], limit: int, words: bool = True) -> list[_Piece]:
        """The overlap to carry: whole pieces, then sentences, ending `pieces` within `limit`.

        The last words of a sentence are taken only when no whole sentence fits: a stray
        fragment in front of whole sentences reads badly.
        """
        taken: list[_Piece] = []
        for piece in reversed(pieces):
            if piece.tokens <= limit:
                taken.append(piece)
                limit -= piece.tokens
                continue
            if piece.level == _PARAGRAPH:
                finer = self.finer(piece, limit)
                taken.extend(reversed(self.tail(finer, limit, words and not taken)))
            elif piece.level == _SENTENCE and words and not taken:
                last_words = self.tail_words(piece, limit)
                if last_words is not None:
                    taken.append(last_words)
            break
        taken.reverse()
        return taken

    def tail_words(self, sentence: _Piece, limit: int) -> _Piece | None:
        """The sentence's last words within `limit` tokens, as one piece.

        Guessed from the sentence's tokens per word and checked, instead of counting every
        word: a call to the tokenizer costs about as much as a short sentence.
        """
        words = sentence.text.split(" ")
        n = min(len(words) - 1, len(words) * limit // max(sentence.tokens, 1))
        while n > 0:
            text = " ".join(words[-n:])
            tokens = self.count(text)
            if tokens <= limit:
                return _Piece(" ", text, tokens, _WORD)
            n = min(n - 1, n * limit // tokens)
        return None

    def pack(self, pieces: list[_Piece], budget: int, overlap: int) -> list[list[_Piece]]:
        """Greedy packing of pieces into groups of at most `budget` tokens, with overlap."""
        groups: list[list[_Piece]] = []
        todo = pieces[::-1]  # a stack, so cut pieces can be pushed back in order
        current: list[_Piece] = []
        used = 0
        fresh = False  # whether `current` holds more than the overlap carried into it
        while todo:
            piece = todo.pop()
            if piece.tokens > budget and piece.level != _SLICE:
                todo.extend(reversed(self.finer(piece, budget)))
                continue
            if used + piece.tokens <= budget:
                current.append(piece)
                used += piece.tokens
                fresh = True
                continue
            if used < budget // 2 and piece.level == _PARAGRAPH:
                # Flushing now would leave a mostly empty chunk: cut the paragraph into
                # sentences to fill it (but not a sentence into words: a cut mid-sentence
                # costs more than a short chunk).
                todo.extend(reversed(self.finer(piece, budget)))
                continue
            if fresh:
                groups.append(current)
                current = self.tail(current, overlap) if overlap else []
                used = sum(p.tokens for p in current)
                fresh = False
            while current and used + piece.tokens > budget:
                used -= current.pop(0).tokens
            current.append(piece)
            used += piece.tokens
            fresh = True
        if fresh:
            groups.append(current)
        return groups
