"""Deployment material: Containerfile, Kustomize overlays, Argo CD, Prometheus rules."""
