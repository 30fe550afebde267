"""Stage runs: each function checks its inputs, then runs (or reuses) one MLflow run.

Every stage does all of its config and input checks before `run_stage` opens a run, so
a mistake never leaves a half-made run behind.
"""
