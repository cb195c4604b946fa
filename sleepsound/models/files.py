"""The file names of a stored head: ``models.heads.artifacts`` writes them, the model registry reads
them, and the registry's listings need no torch for that (``models list`` loaded it only for a name)."""

CONFIG_NAME = "config.json"  # written last: a head folder is complete when it exists
WEIGHTS_NAME = "model.safetensors"
