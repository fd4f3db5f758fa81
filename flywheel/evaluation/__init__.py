"""Evaluation: every rung and baseline on the held-out test queries (NDCG@10, size, speed, input
length), the curves and the HTML report. Imports the stages below."""
