"""Unit tests of chunk_document: sections, packing, overlap, budgets and speed."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from app.retrieval.chunking import ChunkText, chunk_document

ROOT = Path(__file__).resolve().parents[2]


def words(text: str) -> int:
    return len(text.split())


def chunk(text: str, *, title: str = "", size: int = 100, overlap: int = 0) -> list[ChunkText]:
    return chunk_document(text, title=title, size=size, overlap=overlap, count_tokens=words)


@pytest.fixture(scope="module")
def minilm() -> Callable[[str], int]:
    tokenizer = Tokenizer.from_file(str(ROOT / "app" / "assets" / "minilm-tokenizer.json"))
    # The vendored file pads and truncates to 128: a counter must turn both off, or every
    # text would count 128 tokens.
    tokenizer.no_padding()
    tokenizer.no_truncation()

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    return count


# --- shape of the output ---------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   ", "\n\n\t \n"])
def test_blank_text_gives_no_chunks(text: str) -> None:
    assert chunk(text, title="T") == []


def test_short_document_is_one_chunk_with_whitespace_normalised() -> None:
    text = "  Hello   world.\r\nStill\tthe first paragraph.\n \n\n\nSecond  paragraph.  \n"
    assert chunk(text, title=" My \n title ") == [
        ChunkText(
            text="Hello world.\nStill the first paragraph.\n\nSecond paragraph.",
            section=[],
            embed_text="My title\nHello world.\nStill the first paragraph.\n\nSecond paragraph.",
        )
    ]


def test_without_title_or_section_embed_text_is_the_text() -> None:
    [only] = chunk("Just text.")
    assert only.embed_text == "Just text."


def test_headings_start_chunks_and_give_the_section_path() -> None:
    text = (
        "Preamble.\n"
        "# Install\n"
        "Get it.\n"
        "## Linux ##\n"
        "Use apt.\n"
        "#### Deep\n"  # skips a level: still nests under Linux
        "Deep text.\n"
        "### Debian\n"  # pops Deep (level 4 >= 3)
        "Debian text.\n"
        "## Mac\n"  # pops Debian and Linux
        "Use brew.\n"
        "## Empty section\n"
        "# Usage\n"
        "Run it.\n"
    )
    got = [(c.section, c.text, c.embed_text) for c in chunk(text, title="Tool")]
    assert got == [
        ([], "Preamble.", "Tool\nPreamble."),
        (["Install"], "Get it.", "Tool\nInstall\nGet it."),
        (["Install", "Linux"], "Use apt.", "Tool\nInstall > Linux\nUse apt."),
        (["Install", "Linux", "Deep"], "Deep text.", "Tool\nInstall > Linux > Deep\nDeep text."),
        (
            ["Install", "Linux", "Debian"],
            "Debian text.",
            "Tool\nInstall > Linux > Debian\nDebian text.",
        ),
        (["Install", "Mac"], "Use brew.", "Tool\nInstall > Mac\nUse brew."),
        (["Usage"], "Run it.", "Tool\nUsage\nRun it."),
    ]


def test_only_atx_headings_count() -> None:
    text = (
        "#hashtag and #5 are text\n"
        "    # indented four spaces is code\n"
        "####### seven hashes is text\n"
        "#\tTabbed heading\n"
        "body\n"
        "# C# #\n"  # a closing sequence goes; a '#' glued to the word stays
        "sharp\n"
    )
    got = [(c.section, c.text) for c in chunk(text)]
    assert got == [
        (
            [],
            "#hashtag and #5 are text\n# indented four spaces is code\n"
            "####### seven hashes is text",
        ),
        (["Tabbed heading"], "body"),
        (["C#"], "sharp"),
    ]


def test_fenced_code_hides_heading_like_lines() -> None:
    text = (
        "# Setup\n"
        "```bash\n"
        "# not a heading\n"
        "~~~\n"  # a different fence character does not close it
        "```\n"
        "after\n"
        "## Next\n"
        "done\n"
    )
    got = [(c.section, c.text) for c in chunk(text)]
    assert got == [
        (["Setup"], "```bash\n# not a heading\n~~~\n```\nafter"),
        (["Setup", "Next"], "done"),
    ]


def test_unclosed_fence_runs_to_the_end() -> None:
    got = [(c.section, c.text) for c in chunk("~~~~\n# code\n~~~\n# still code")]
    assert got == [([], "~~~~\n# code\n~~~\n# still code")]


def test_headings_only_document_still_gets_a_chunk() -> None:
    got = [(c.section, c.text) for c in chunk("# Title\n## Sub\n")]
    assert got == [([], "Title\n\nSub")]


@pytest.mark.parametrize(("size", "overlap"), [(0, 0), (10, -1), (10, 10), (10, 11)])
def test_bad_sizes_are_rejected(size: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        chunk("text", size=size, overlap=overlap)


# --- packing ---------------------------------------------------------------------------------


def test_paragraphs_pack_greedily_and_stay_whole() -> None:
    # Paragraphs of 4, 4, 3 and 6 words with size 8: [4+4], then 3+6 > 8 with the chunk at
    # least half full, so the 6-word paragraph starts a chunk of its own.
    text = "A b c d.\n\nE f g h.\n\nI j k.\n\nL m n o p q."
    assert [c.text for c in chunk(text, size=8)] == [
        "A b c d.\n\nE f g h.",
        "I j k.",
        "L m n o p q.",
    ]


def test_oversized_paragraph_is_cut_into_sentences_then_words() -> None:
    # One paragraph of 11 words: sentences of 3, 6 and 2 words; size 5. The 6-word sentence
    # does not fit in 5, so it is cut into words and packed after "A b c."; "J k." stays a
    # whole sentence.
    text = "A b c. D e f g h i. J k."
    assert [c.text for c in chunk(text, size=5)] == ["A b c. D e", "f g h i.", "J k."]


def test_half_empty_chunk_is_filled_by_cutting_the_next_paragraph() -> None:
    # "Short." (1 word) then an 8-word paragraph, size 8: flushing after "Short." would leave
    # a chunk 1/8 full, so the paragraph is cut into its two sentences to fill it.
    text = "Short.\n\nA b c d. E f g h."
    assert [c.text for c in chunk(text, size=8)] == ["Short.\n\nA b c d.", "E f g h."]


def test_overlap_carries_whole_sentences() -> None:
    # Sentences of 3 words, size 9, overlap 4: each chunk after the first starts with the
    # last sentence (3 words <= 4; two sentences would be 6 > 4) of the one before.
    text = "A1 a2 a3. B1 b2 b3. C1 c2 c3. D1 d2 d3. E1 e2 e3."
    assert [c.text for c in chunk(text, size=9, overlap=4)] == [
        "A1 a2 a3. B1 b2 b3. C1 c2 c3.",
        "C1 c2 c3. D1 d2 d3. E1 e2 e3.",
    ]


def test_overlap_falls_back_to_words_of_a_long_sentence() -> None:
    # The last sentence of the first chunk has 6 words > overlap 3: its last 3 words carry.
    text = "A b c d e f. G h i j k l. M n o p q r."
    assert [c.text for c in chunk(text, size=12, overlap=3)] == [
        "A b c d e f. G h i j k l.",
        "j k l. M n o p q r.",
    ]


def test_overlap_never_pushes_a_chunk_past_its_size() -> None:
    # Two 8-word paragraphs, size 9, overlap 4: "e f g h." would carry, but 4 + 8 > 9, so
    # the carried words are dropped rather than the size exceeded.
    text = "A b c d e f g h.\n\nI j k l m n o p."
    got = chunk(text, size=9, overlap=4)
    assert [c.text for c in got] == ["A b c d e f g h.", "I j k l m n o p."]


def test_title_and_section_come_out_of_the_budget() -> None:
    # size 10, prefix "T t\nSec" is 3 words, so each text gets at most 7.
    text = "# Sec\n" + " ".join(f"W{i}" for i in range(14))
    got = chunk(text, title="T t", size=10)
    assert [c.text for c in got] == [
        "W0 W1 W2 W3 W4 W5 W6",
        "W7 W8 W9 W10 W11 W12 W13",
    ]
    assert all(words(c.embed_text) <= 10 for c in got)


def test_a_long_title_leaves_at_least_half_the_size_for_text() -> None:
    title = " ".join(["long"] * 20)
    got = chunk("a b c d e f g", title=title, size=10)
    assert [c.text for c in got] == ["a b c d e", "f g"]  # size // 2 = 5 words a chunk


def test_a_word_longer_than_the_budget_is_sliced() -> None:
    def chars(text: str) -> int:
        return len(text.replace(" ", "").replace("\n", ""))

    text = "tiny " + "x" * 23 + " end"
    got = chunk_document(text, title="", size=10, overlap=0, count_tokens=chars)
    assert [c.text for c in got] == ["tiny", "x" * 10, "x" * 10, "xxx end"]


def test_deterministic() -> None:
    text = "# A\n" + "Some words here. " * 40 + "\n\n## B\n" + "Other words. " * 30
    first = chunk(text, title="Doc", size=20, overlap=5)
    assert first == chunk(text, title="Doc", size=20, overlap=5)
    assert len(first) > 4


# --- properties ------------------------------------------------------------------------------

# Documents of unique words "W<i>", so each chunk maps back to a range of word indices.
paragraph_shapes = st.lists(
    st.lists(st.integers(min_value=1, max_value=15), min_size=1, max_size=6),
    min_size=1,
    max_size=8,
)


def build(shape: list[list[int]]) -> tuple[str, list[tuple[int, int]]]:
    """The document text and the (start, end) character span of each word."""
    paragraphs, i = [], 0
    for sentences in shape:
        parts = []
        for n in sentences:
            parts.append(" ".join(f"W{j}" for j in range(i, i + n)) + ".")
            i += n
        paragraphs.append(" ".join(parts))
    text = "\n\n".join(paragraphs)
    return text, [m.span() for m in re.finditer(r"W\d+\.?", text)]


@settings(max_examples=300, deadline=None)
@given(
    shape=paragraph_shapes,
    size=st.integers(min_value=1, max_value=40),
    overlap_share=st.floats(min_value=0.0, max_value=0.99),
    title=st.sampled_from(["", "T", "A two three"]),
)
def test_chunks_tile_the_document_within_size_and_overlap(
    shape: list[list[int]], size: int, overlap_share: float, title: str
) -> None:
    text, spans = build(shape)
    overlap = int(size * overlap_share)
    got = chunk(text, title=title, size=size, overlap=overlap)
    budget = max(size - words(title), size // 2, 1)
    previous_end = -1
    for c in got:
        assert c.section == []
        assert words(c.text) <= budget
        assert c.embed_text == (f"{title}\n{c.text}" if title else c.text)
        ids = [int(w.strip(".")[1:]) for w in c.text.split()]
        start, end = ids[0], ids[-1]
        assert ids == list(range(start, end + 1))  # contiguous
        # The text is exactly that stretch of the document, separators included.
        assert c.text == text[spans[start][0] : spans[end][1]]
        assert start <= previous_end + 1  # no gap
        assert previous_end - start + 1 <= min(overlap, budget // 2)  # bounded overlap
        assert end > previous_end  # progress
        previous_end = end
    assert got[0].text.startswith("W0")
    assert previous_end == len(spans) - 1


# --- a real tokenizer ------------------------------------------------------------------------

MARKDOWN = """\
# Installing the service

The service runs on Linux and macOS. It needs Python 3.11 or newer, a Redis-compatible
store for its event log, and about 300 MB of memory for the embedding model.

## From a wheel

Download the wheel, create a virtual environment, and install it with pip. The first start
downloads nothing: the tokenizer and the int8 ONNX weights ship inside the package, so
air-gapped machines work the same way as connected ones.

```bash
python -m venv .venv
.venv/bin/pip install rag_pipeline-0.1.0-py3-none-any.whl
```

## Configuration

Every setting is an environment variable. RAG_CHUNK_SIZE sets the chunk size in tokens of
the embedder (256 by default, the model's window), and RAG_CHUNK_OVERLAP sets how many
tokens neighbouring chunks share (32 by default). Changing either re-chunks documents on
their next ingestion; versions keep old and new chunks apart until the swap completes.

# Querying

Send a POST request to /v1/search with the query text, the number of results, and
optional metadata filters. Hybrid mode fuses dense cosine scores with BM25 after min-max
normalisation; a late-interaction pass over 1-bit token signatures then reranks the top
candidates, and maximal marginal relevance removes near-duplicates from the final list.
"""


def test_real_tokenizer_respects_size_and_covers_the_document(
    minilm: Callable[[str], int],
) -> None:
    got = chunk_document(MARKDOWN, title="Operator guide", size=48, overlap=12, count_tokens=minilm)
    assert len(got) >= 6
    assert all(minilm(c.embed_text) <= 48 for c in got)
    assert {tuple(c.section) for c in got} == {
        ("Installing the service",),
        ("Installing the service", "From a wheel"),
        ("Installing the service", "Configuration"),
        ("Querying",),
    }
    # Every word of the body (headings aside) is in some chunk of its own section.
    body = [ln for ln in MARKDOWN.splitlines() if not re.match(r"#{1,6} ", ln)]
    chunk_words = {w for c in got for w in c.text.split()}
    assert set(" ".join(body).split()) == chunk_words


@pytest.mark.slow
def test_scifact_corpus_chunks_within_size(scifact: Path, minilm: Callable[[str], int]) -> None:
    # How fast chunking runs is measured by bench/replay_rate.py, not here.
    docs = [json.loads(line) for line in (scifact / "corpus.jsonl").read_text().splitlines()]
    chunked = [
        chunk_document(d["text"], title=d["title"], size=256, overlap=32, count_tokens=minilm)
        for d in docs
    ]
    assert all(chunks for d, chunks in zip(docs, chunked, strict=True) if d["text"].strip())
    sample = [c for chunks in chunked[:300] for c in chunks]
    assert all(minilm(c.embed_text) <= 256 for c in sample)
