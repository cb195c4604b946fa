"""Running on a storage root: the one-writer lock, run records, the nightly state, cluster job submission."""
