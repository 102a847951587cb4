"""One dataset = one partition. Partitions are added by the CLI and by the landing sensor."""

import dagster as dg

dataset_partitions = dg.DynamicPartitionsDefinition(name="datasets")

# A backfill over every dataset launches one run per dataset: each trains on its own and queues on the gpu pool.
ONE_DATASET_PER_RUN = dg.BackfillPolicy.multi_run(max_partitions_per_run=1)
