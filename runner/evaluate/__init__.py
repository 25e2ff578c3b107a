"""`runner eval`: benchmarks through lm-evaluation-harness on a run's model as trained (tasks,
harness, results, command), also run after training by a config's `evaluation:` section."""
