"""Capture: running the model on prompt batches and scoring what it computes."""
