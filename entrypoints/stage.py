"""MLproject entry point of every stage: `python entrypoints/stage.py STAGE --config ...`
parses MLflow's parameters and runs the same code as the CLI (stages.registry says which)."""

import sys

from hyrax_mlops.cli import entrypoint

if __name__ == "__main__":
    sys.exit(entrypoint(sys.argv[1], sys.argv[2:]))
