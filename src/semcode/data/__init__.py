"""Data: the pair schema and its Parquet shards, source readers, extraction, cleaning, splitting."""
