"""GitHub access: the session's scoped client, the tracking comment, write pacing and diffs."""
