"""MLproject entry point `analyse`: parse MLflow's parameters and run the same code as the CLI."""

import sys

from hyrax_mlops.cli import entrypoint

if __name__ == "__main__":
    sys.exit(entrypoint("analyse"))
