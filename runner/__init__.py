"""runner: declarative LLM fine-tuning. One YAML file, one reproducible Plan."""

__version__ = "0.1.0"
