"""What the recordings are scored with: stage names, annotation files, breathing events, prediction targets."""
