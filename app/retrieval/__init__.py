"""Pure retrieval math: chunking, fusion, MMR, late interaction and ranking metrics (no I/O)."""
