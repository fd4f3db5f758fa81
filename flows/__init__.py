"""Prefect flows: composition of tasks only. Each runs locally with ``python -m flows.<name>``."""
