"""Counterfactual measurements: head ablation and activation patching on prompt pairs."""
