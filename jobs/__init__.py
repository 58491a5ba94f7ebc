"""The worker side: the session pipeline and what it runs, in rooms by concern.

Layers, top to bottom (the import contract in pyproject.toml holds them): the worker; upkeep and
the session pipeline; GitHub access; the sandbox, the model gateway and egress; common.
"""
