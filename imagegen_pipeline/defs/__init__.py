"""Dagster plumbing: each asset reads its config, calls one core function, returns rich metadata."""
