"""What every process shares, and the one door the web process may use into `jobs`.

Settings per role, the session request and its modes, the queue's names and Redis keys, log
redaction and the control-socket protocol of the gateway and egress processes.
"""
