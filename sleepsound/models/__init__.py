"""The networks: frozen speech backbones (feature extractors) and the small trained heads on top."""
