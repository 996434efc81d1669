"""Write the fp32 sentence-transformers vectors the int8 local embedder is tested against.

Runs in a separate environment with torch and sentence-transformers (not project
dependencies); see tests/data/README.md for the exact recipe and versions. Usage:

    HF_HUB_OFFLINE=1 python bench/make_reference_vectors.py MODEL_DIR [OUT_JSON]
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

# Varied on purpose: a single word, plain prose, scientific notation and jargon, accents and
# CJK (BertNormalizer keeps accents and splits CJK characters), symbols only, and one text
# far past 256 tokens so the reference pins the truncation point too.
_LONG = " ".join(
    f"Paragraph {i}: cerebral white matter anisotropy was measured with diffusion tensor "
    f"imaging in {i * 7} preterm infants, and the apparent diffusion coefficient fell by "
    f"{i}.{i} percent between 28 and 40 weeks of gestation."
    for i in range(1, 16)
)

TEXTS: list[str] = [
    "hello",
    "How do I reset my password if I no longer have access to my email account?",
    "Microstructural development of human newborn cerebral white matter assessed in vivo by "
    "diffusion tensor magnetic resonance imaging.",
    "The IC50 of compound 7b against EGFR(T790M/L858R) was 3.2 ± 0.4 nM (n = 3; p < 0.001), "
    "a 40-fold improvement over gefitinib.",
    "Café crème brûlée à Zürich — naïve façade; 東京の天気は晴れです; Привет, мир!",
    "!!! ??? ... ### $$$",
    "Retrieval-augmented generation combines a dense retriever with a language model so that "
    "answers can cite passages from a corpus instead of relying on parametric memory alone.",
    _LONG,
]


def main(argv: list[str]) -> int:
    import tokenizers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import __version__ as st_version

    model_dir = Path(argv[1])
    out = Path(argv[2]) if len(argv) > 2 else Path("tests/data/minilm_reference.json")
    model = SentenceTransformer(str(model_dir), device="cpu")
    assert model.max_seq_length == 256, model.max_seq_length
    # batch_size=1 so no padding reaches the reference; it is the unbatched ground truth.
    vectors = model.encode(TEXTS, batch_size=1, normalize_embeddings=True, convert_to_numpy=True)
    n_tokens = [
        len(model.tokenizer(text, truncation=True, max_length=256)["input_ids"]) for text in TEXTS
    ]
    weights = model_dir / "model.safetensors"
    payload: dict[str, Any] = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (fp32)",
        "model_safetensors_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "sentence_transformers": st_version,
            "tokenizers": tokenizers.__version__,
        },
        "encode": "normalize_embeddings=True, batch_size=1, max_seq_length=256, device=cpu",
        "items": [
            {
                "text": text,
                "n_tokens_with_specials": n,
                "vector": [round(float(x), 6) for x in vec],
            }
            for text, n, vec in zip(TEXTS, n_tokens, vectors, strict=True)
        ],
    }
    out.write_text(json.dumps(payload, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(TEXTS)} vectors to {out}; token counts {n_tokens}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
