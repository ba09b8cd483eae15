"""The core: markers, case identity, records, prompts run, trajectories, executor, configuration."""
