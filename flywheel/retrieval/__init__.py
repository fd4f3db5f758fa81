"""First-stage retrieval: BM25 and the MiniLM bi-encoder (candidates for labelling, features for the
judge, baselines for evaluation) and the document-embedding cache. Imports only ``data`` (and, below the
library, ``models.loading``'s lock around the bi-encoder's load)."""
