"""Evaluation: task generators, metrics and runners."""
