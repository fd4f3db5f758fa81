"""Stage 6, serving: the MLflow registry (pyfunc, lineage, the promotion gate, aliases, rollback) and the scoring
service. The top of the pipeline; imports any stage below."""
