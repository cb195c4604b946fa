"""Score accepted recordings with the serving heads: per-epoch predictions, partitioned by recording."""
