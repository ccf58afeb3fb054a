"""Representations: sparse autoencoders, their hook points and difference-in-means probes."""
