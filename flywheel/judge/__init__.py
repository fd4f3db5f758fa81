"""The judge: the grading policy, the prompt and the two backends (offline, openai), the online and batch
labelling clients, calibration against the golden set and its agreement statistics, bias probes, exemplar and
prompt selection, policy impact, and fitted judges by version. Imports only ``data`` and ``retrieval``."""
