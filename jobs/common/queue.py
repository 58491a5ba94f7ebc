"""The queue between the web process and the worker: job names, TTLs and Redis keys.

The web writes with them (app/enqueue.py), the worker and upkeep read with them; one definition
each, so neither side imports the other's code. Callbacks go by dotted path: the web process
never imports the worker's modules.
"""

from __future__ import annotations

import hashlib
import re

from redis import Redis
from rq import Queue
from rq.job import Callback
from rq.serializers import JSONSerializer

DELIVERY_TTL = 7 * 24 * 3600
RUN_SESSION = "jobs.session.pipeline.run_session"
# When the session cannot end its tracking comment itself (its horse was killed, RQ found it
# abandoned, or it raised), these end it as interrupted. RQ gives a callback 60 s by default.
ON_FAILURE = Callback("jobs.upkeep.interrupted.on_failure", timeout=60)
ON_STOPPED = Callback("jobs.upkeep.interrupted.on_stopped", timeout=60)


def session_queue(redis: Redis, name: str) -> Queue:
    return Queue(name, connection=redis, serializer=JSONSerializer)


def session_id_for(delivery_id: str) -> str:
    # RQ job ids allow only letters, digits, '_' and '-'; GitHub's GUIDs fit, others are hashed.
    if re.fullmatch(r"[A-Za-z0-9-]{1,64}", delivery_id):
        return f"session-{delivery_id}"
    return "session-" + hashlib.sha256(delivery_id.encode()).hexdigest()[:32]


def is_session_id(value: str) -> bool:
    """Whether `value` has the shape `session_id_for` gives (a check run's external_id)."""
    return re.fullmatch(r"session-[A-Za-z0-9-]{1,64}", value) is not None


def check_run_key(session_id: str) -> str:
    """The id of the session's check run, for upkeep to end it when the session could not."""
    return f"claudecluster:check-run:{session_id}"


# The identifier of the Stop button on a session's check run (jobs/github/checks.py); a click
# comes back to the web as `check_run.requested_action` (app/triggers.py).
STOP_ACTION = "stop"


def claim_key(delivery_id: str) -> str:
    """Set once a delivery is queued; the redelivery sweeper reads it too."""
    return f"claudecluster:delivery:{delivery_id}"


def active_key(thread: str) -> str:
    return f"claudecluster:active:{thread}"


def stop_key(session_id: str) -> str:
    """Set (to the login who asked) once the session has accepted a stop."""
    return f"claudecluster:stop:{session_id}"


def stop_requests_key(session_id: str) -> str:
    """Logins that asked the session to stop, for it to check: the web cannot ask GitHub."""
    return f"claudecluster:stop-requests:{session_id}"
