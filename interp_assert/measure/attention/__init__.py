"""The attention paths capture scores through: row blocks, fused kernels and the native CPU kernel."""
