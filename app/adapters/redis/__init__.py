"""Adapters to Redis (or Valkey): event log, cache, status, rate limits, jobs, embedded server."""
