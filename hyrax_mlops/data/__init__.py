"""Datasets as run artifacts: fixed-shape shards + catalog + manifest, and the DataProvider."""
