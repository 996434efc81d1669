"""Unit tests of sign packing and MaxSim over 1-bit token signatures."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from app.retrieval.late_interaction import maxsim, pack_signs

DIM = 64


def unpack_signs(signature: bytes, dim: int) -> npt.NDArray[np.float32]:
    """The +1/-1 matrix a signature stands for: the oracle the packed scoring is held to."""
    bits = np.unpackbits(np.frombuffer(signature, dtype=np.uint8).reshape(-1, dim // 8), axis=1)
    return bits.astype(np.float32) * 2.0 - 1.0


def unit_rows(rng: np.random.Generator, n: int, dim: int = DIM) -> npt.NDArray[np.float32]:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    rows: npt.NDArray[np.float32] = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(
        np.float32
    )
    return rows


def test_pack_layout_is_dim_over_8_bytes_a_token_most_significant_bit_first() -> None:
    tokens = np.full((2, 16), -1.0, dtype=np.float32)
    tokens[0, 0] = 0.5  # first bit of the first byte
    tokens[1, 15] = 2.0  # last bit of the last byte
    tokens[1, 3] = 0.0  # zero is not positive: a 0 bit
    assert pack_signs(tokens) == bytes([0b1000_0000, 0, 0, 0b0000_0001])


def test_pack_unpack_round_trip_gives_the_signs() -> None:
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((7, DIM)).astype(np.float32)
    signature = pack_signs(tokens)
    assert len(signature) == 7 * DIM // 8
    unpacked = unpack_signs(signature, DIM)
    assert unpacked.dtype == np.float32
    np.testing.assert_array_equal(unpacked, np.where(tokens > 0, 1.0, -1.0))
    assert pack_signs(unpacked) == signature


def test_pack_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        pack_signs(np.ones((3, 12), dtype=np.float32))
    with pytest.raises(ValueError):
        pack_signs(np.ones(16, dtype=np.float32))


def brute_force(query: npt.NDArray[np.float32], signatures: list[bytes]) -> list[float]:
    out = []
    for sig in signatures:
        doc = unpack_signs(sig, DIM).astype(np.float64)
        if len(doc) == 0:
            out.append(0.0)
            continue
        best = [max(float(q @ d) for d in doc) for q in query.astype(np.float64)]
        out.append(sum(best) / len(best) / np.sqrt(DIM))
    return out


@pytest.mark.parametrize("seed", range(10))
def test_maxsim_equals_a_brute_force_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    query = unit_rows(rng, int(rng.integers(1, 9)))
    signatures = [pack_signs(unit_rows(rng, int(n))) for n in rng.integers(0, 12, size=6)]
    got = maxsim(query, signatures, DIM)
    assert got.dtype == np.float32
    assert got.shape == (6,)
    np.testing.assert_allclose(got, brute_force(query, signatures), rtol=1e-5, atol=1e-6)


def test_maxsim_of_a_document_of_the_query_signs() -> None:
    # A document whose one token has the signs of the query's one token scores
    # sum(|q|) / sqrt(dim), the best any document can.
    query = np.array([[0.5, -0.5, 0.5, -0.5, 0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    signs = np.array([[1, -1, 1, -1, -1, -1, -1, -1]], dtype=np.float32)
    [score] = maxsim(query, [pack_signs(signs)], 8)
    assert score == pytest.approx(2.0 / np.sqrt(8))


def test_maxsim_empty_inputs() -> None:
    rng = np.random.default_rng(1)
    query = unit_rows(rng, 3)
    assert maxsim(query, [], DIM).shape == (0,)
    # A document with no tokens scores 0; so does anything against a query with no tokens.
    np.testing.assert_array_equal(maxsim(query, [b""], DIM), [0.0])
    sigs = [pack_signs(unit_rows(rng, 4))]
    np.testing.assert_array_equal(maxsim(np.zeros((0, DIM), dtype=np.float32), sigs, DIM), [0.0])


def test_maxsim_rejects_a_ragged_signature() -> None:
    # 4 + 20 bytes join into 24 = 3 whole tokens of dim 64: it would silently misalign.
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError):
        maxsim(unit_rows(rng, 2), [b"\x00" * 4, b"\x00" * 20], DIM)


def test_sign_maxsim_tracks_full_precision_maxsim() -> None:
    # Documents whose tokens are noisy copies of the query's tokens, from close copies to
    # pure noise: the score on signs should rank them as the full-precision score does.
    rng = np.random.default_rng(3)
    dim = 128
    query = unit_rows(rng, 8, dim)
    full, signed = [], []
    for noise in np.linspace(0.0, 3.0, 40):
        copies = query[rng.integers(0, 8, size=6)] + noise * unit_rows(rng, 6, dim)
        doc = (copies / np.linalg.norm(copies, axis=1, keepdims=True)).astype(np.float32)
        full.append(float((query @ doc.T).max(axis=1).mean()))
        signed.append(float(maxsim(query, [pack_signs(doc)], dim)[0]))
    pearson = np.corrcoef(full, signed)[0, 1]
    ranks_full = np.argsort(np.argsort(full))
    ranks_signed = np.argsort(np.argsort(signed))
    spearman = np.corrcoef(ranks_full, ranks_signed)[0, 1]
    assert pearson > 0.95
    assert spearman > 0.9
