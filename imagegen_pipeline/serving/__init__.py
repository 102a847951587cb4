"""MLflow pyfunc models, logged as code (models-from-code): nothing is cloudpickled, weights are artifacts."""
