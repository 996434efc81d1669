"""Real Redis topologies for tests: a primary with replicas under Sentinels, and a Cluster."""
