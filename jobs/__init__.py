"""RQ jobs: the agent session pipeline, run by the worker process."""
