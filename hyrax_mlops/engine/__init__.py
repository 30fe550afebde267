"""The training loop, inference and the model bundle format (in-process; Ray comes later)."""
