"""The session pipeline (pipeline.py) and its flows, over one shared "run the agent" module."""
