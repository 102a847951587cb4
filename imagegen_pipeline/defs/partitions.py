"""One dataset = one partition. Partitions are added by the CLI and by the landing sensor."""

import warnings

import dagster as dg

# `backfill_policy` is a beta parameter of @asset in dagster 1.13. Its warning, printed once per asset by every
# process that loads the definitions (11 lines at the top of `make demo`), is nothing a user can act on.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy` of function `asset`", category=dg.BetaWarning)

dataset_partitions = dg.DynamicPartitionsDefinition(name="datasets")

# A backfill over every dataset launches one run per dataset: each trains on its own and queues on the gpu pool.
ONE_DATASET_PER_RUN = dg.BackfillPolicy.multi_run(max_partitions_per_run=1)
