"""Experiments and training: the YAML schema (and the study's format), datasets, run folders, the training
loop, sweeps on workers or Ray, locks, results tables and plots."""
