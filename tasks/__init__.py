"""Prefect tasks: thin wrappers (retries, content-keyed cache, artifact) around one library function each."""
