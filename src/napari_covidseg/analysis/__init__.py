"""Quantitative analysis of segmentations: per-class metrics against a reference."""
