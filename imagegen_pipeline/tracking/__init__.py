"""MLflow plumbing: where runs live, one experiment per dataset, models logged as code, alias promotion.

The ML core never imports this package; Dagster assets call it with what the core returned.
"""
