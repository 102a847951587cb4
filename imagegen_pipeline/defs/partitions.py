"""One dataset = one partition. Partitions are added by the CLI and by the landing sensor."""

import dagster as dg

dataset_partitions = dg.DynamicPartitionsDefinition(name="datasets")
