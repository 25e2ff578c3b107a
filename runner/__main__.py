"""`python -m runner cfg.yaml` and `accelerate launch -m runner cfg.yaml` train (runner.cli reads a
first argument ending in .yaml as `train`)."""
import sys

from runner.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
