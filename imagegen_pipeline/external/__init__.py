"""Work that runs outside the Dagster run worker and reports back through Dagster Pipes (`dagster_pipes` only:
no Dagster import here, so the same module runs in a torchrun worker or a Kubernetes pod)."""
