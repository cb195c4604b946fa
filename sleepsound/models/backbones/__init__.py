"""Frozen speech foundation models that turn 30-s epochs into pooled frame embeddings.

Import the submodules directly (``sleepsound.models.backbones.pretrained``, ``.whisper_ct2``,
``.tiny``); this package imports nothing heavy itself, so ``import sleepsound.models.backbones``
stays cheap for Ray workers and the CLI.
"""
