"""The plain-PyTorch core: shard reading, models, training, metrics, galleries. Never imports Dagster or MLflow."""
