"""Adapters to Qdrant: the engine in process (Edge) and a Qdrant cluster (qdrant-client)."""
