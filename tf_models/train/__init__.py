"""Training: a run end to end, metrics and plots, comparison tables, cross-validation."""
