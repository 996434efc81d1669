"""The `rag-pipeline` command line: one module per command family."""
