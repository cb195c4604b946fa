"""Fit the heads on cached embeddings: datasets, the training loop, subject splits, Ray Train, cross-validation."""
