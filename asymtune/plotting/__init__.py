"""Figures of compared runs: what to draw (`series`, no matplotlib) and drawing it (`draw`, the `analysis` extra)."""
