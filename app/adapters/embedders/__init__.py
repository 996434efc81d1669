"""Embedders: MiniLM on onnxruntime in process, and an OpenAI-compatible embeddings API."""
