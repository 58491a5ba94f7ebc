"""What the agent runs in: the workspace (a clone the worker owns) and the container."""
