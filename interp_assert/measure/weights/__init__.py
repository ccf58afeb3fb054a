"""Scores read from the weights alone: composition, copying and what changed between two models."""
