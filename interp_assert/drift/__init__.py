"""Comparing a model with its past and with other checkpoints: fingerprints, snapshots, audit, track."""
