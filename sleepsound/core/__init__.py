"""What every stage shares: settings, the storage root, Parquet schemas, findings, prefetching."""
