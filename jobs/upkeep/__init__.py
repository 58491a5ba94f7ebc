"""Upkeep: removing what dead sessions left, ending their comments, finding lost deliveries."""
