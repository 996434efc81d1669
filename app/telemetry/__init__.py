"""Traces (OpenTelemetry) and metrics (Prometheus); names in `schema`, written out as YAML."""
