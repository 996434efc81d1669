"""Late interaction over 1-bit token signatures: pack token vectors, score by MaxSim."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt


def pack_signs(token_vectors: npt.NDArray[np.float32]) -> bytes:
    """Keep the sign of each dimension of each token vector: dim/8 bytes a token."""
    if token_vectors.ndim != 2 or token_vectors.shape[1] % 8:
        raise ValueError("token vectors must be (n_tokens, dim) with dim a multiple of 8")
    return np.packbits(token_vectors > 0, axis=1).tobytes()


def maxsim(
    query_tokens: npt.NDArray[np.float32], signatures: Sequence[bytes], dim: int
) -> npt.NDArray[np.float32]:
    """Mean over query tokens of the best match among each document's tokens.

    Query tokens stay full precision and documents keep only signs (asymmetric, as in
    binary ColBERT variants); dividing by sqrt(dim) puts a +/-1 vector on the unit sphere,
    so each score reads as an average cosine in [-1, 1].
    """
    if not signatures:
        return np.zeros(0, dtype=np.float32)
    if query_tokens.shape[0] == 0:
        # No query tokens: nothing to match (and the mean of nothing would be NaN).
        return np.zeros(len(signatures), dtype=np.float32)
    row = dim // 8
    if dim <= 0 or dim % 8 or any(len(sig) % row for sig in signatures):
        # Checked per signature: a ragged one could still make the joined bytes divide evenly
        # and misalign every document after it.
        raise ValueError(f"every signature must be whole tokens of dim {dim}")
    lengths = np.asarray([len(sig) // row for sig in signatures])
    bits = np.unpackbits(
        np.frombuffer(b"".join(signatures), dtype=np.uint8).reshape(-1, row), axis=1
    ).astype(np.float32)  # (sum tokens, dim) of 0/1
    # With s = 2b - 1: q.s = 2 q.b - sum(q), which spares a pass over the large matrix; and
    # (tokens x dim) @ (dim x m) is the layout BLAS runs fastest here.
    sims = 2.0 * (bits @ query_tokens.T) - query_tokens.sum(axis=1)  # (sum tokens, m)
    out = np.zeros(len(signatures), dtype=np.float32)
    present = lengths > 0
    if present.any():
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))[present]
        best = np.maximum.reduceat(sims, starts, axis=0)  # (docs with tokens, m)
        out[present] = best.mean(axis=1)
    return out / np.float32(np.sqrt(dim))
