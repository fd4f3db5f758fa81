"""Data, the bottom of the pipeline: table schemas and their great-expectations contracts, the Parquet lake, the
golden set, BEIR and Avature import, engagement events, and the content-keyed cache. Imports no other stage."""
