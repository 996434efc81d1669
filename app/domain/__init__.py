"""The domain: records, events and document status the services pass around (no I/O)."""
