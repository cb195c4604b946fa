"""Small trained heads over frozen frame embeddings, and their safe on-disk form."""

from sleepsound.models.heads.artifacts import HEAD_CLASSES, HeadArtifactError, build_head, load_head, save_head
from sleepsound.models.heads.attention import AttentionPoolingHead, build_context, context_indices
from sleepsound.models.heads.mlp import MeanPoolingHead

__all__ = [
    "HEAD_CLASSES",
    "AttentionPoolingHead",
    "HeadArtifactError",
    "MeanPoolingHead",
    "build_context",
    "build_head",
    "context_indices",
    "load_head",
    "save_head",
]
