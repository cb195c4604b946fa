"""Find recordings in a source, check each one, and write the manifest (accepted or quarantined, with reasons)."""
