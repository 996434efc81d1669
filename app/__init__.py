"""rag-pipeline: an event-sourced retrieval service for RAG applications."""

__version__ = "0.1.0"
