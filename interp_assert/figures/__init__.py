"""Figures for reports and failure artifacts: numbers in, PNG files out (matplotlib, Agg)."""
