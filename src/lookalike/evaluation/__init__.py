"""Measuring search quality: ground truth and metrics, the evaluation protocol, reports."""
