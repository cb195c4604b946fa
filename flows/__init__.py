"""Prefect flows: what runs, in which order. The only layer that knows the orchestrator."""
