"""Corpus cleaning: the per-document steps, dedup, the drivers and the report."""
