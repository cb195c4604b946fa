"""Whole procedures built from the stages: the demo and the EMBC 2025 reproduction."""
