"""What one asset materialization does, end to end, without Dagster: read the stage's inputs, call the ML core,
tell MLflow through a `Tracker`, write the stage's files, and say what happened as plain metadata values
(`outputs.py`). Each Dagster asset makes one call here; tests call the same functions directly.

Layers, top to bottom (each imports only from below it): `defs/` (Dagster) -> `stages/` -> `tracking/` (MLflow)
and `ml/`, `ingest/`, `datasets/` (plain PyTorch and files) -> `paths`, `atomic`.
"""
