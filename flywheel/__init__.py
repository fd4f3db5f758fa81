"""Core library of the relevance flywheel: data contracts, policies, judge, retrieval, metrics,
registry and serving. Never imports prefect (tests/unit/test_layering.py proves it)."""

__version__ = "0.1.0"
