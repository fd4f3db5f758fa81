"""Labelling: today's candidates (retrieved, pre-graded, stratified) and the day's labels by the calibrated
judge (resumable, never paid twice, validated), read back as training pairs. Imports the stages below."""
