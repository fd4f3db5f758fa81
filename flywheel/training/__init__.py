"""Training: the ranker ladder (teacher, distilled rungs, multi-teacher, pruning) and context compression.
Plain functions over ``models/``; imports the stages below."""
