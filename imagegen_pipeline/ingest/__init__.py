"""Ingestion core (no Dagster): validate landing files, build the manifest, write Parquet shards."""
