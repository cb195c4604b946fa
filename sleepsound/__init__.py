"""sleepsound: sleep stages and breathing events from overnight audio."""

__version__ = "0.1.0"
