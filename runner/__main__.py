"""`python -m runner cfg.yaml` and `accelerate launch -m runner cfg.yaml` train."""
import sys

from runner.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]] if sys.argv[1:2] and sys.argv[1].endswith((".yaml", ".yml")) else sys.argv[1:]))
