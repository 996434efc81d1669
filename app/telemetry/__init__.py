"""Traces (OpenTelemetry) and metrics (Prometheus); names in `schema`, held to the YAML registry."""
