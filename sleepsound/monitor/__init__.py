"""Bedside monitoring: streamed nights scored as they arrive (``sleepsound monitor serve``)."""
