"""Serving, the top of the pipeline: the MLflow registry (pyfunc, lineage, the promotion gate, aliases,
rollback) and the scoring service. May import any stage below."""
