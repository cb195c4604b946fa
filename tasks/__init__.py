"""Prefect tasks: coarse steps that pass URIs and small manifests, never arrays."""
