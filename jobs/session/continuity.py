"""Follow-ups continue the session: the thread's earlier conversation, resumed by the CLI.

Before the run, `resumption` looks up the thread's kept transcript (jobs/common/continuity.py)
and checks it again (the CLI version of the image, the lines, the session id); a usable one is
resumed with `--resume`, anything else starts fresh and the tracking comment says why. After
the run, `keep` stores what the CLI wrote, read out of the sandbox without trusting it and
redacted (jobs/sandbox/conversation.py). A transcript is found only under its own thread's
key (installation, repository id, number): it never reaches another thread or repository, and
only sessions that someone allowed to trigger on that thread started ever see it.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from docker.utils import parse_bytes
from redis.exceptions import RedisError

from jobs.common.continuity import Kept, Thread, TranscriptStore
from jobs.common.request import Mode
from jobs.sandbox.container import Conversation, SandboxRun
from jobs.sandbox.conversation import ConversationError, checked
from jobs.session.state import Session

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resumption:
    conversation: Conversation
    cli_version: str
    note: str  # what the tracking comment says about it ("" for a thread's first session)


def store_for(session: Session) -> TranscriptStore:
    settings = session.settings
    limit = int(parse_bytes(settings.transcript_max_size))
    return TranscriptStore(session.redis, limit, settings.transcript_retention_days)


def thread_of(session: Session) -> Thread:
    request = session.request
    return Thread(request.installation_id, int(session.repository["id"]), request.number)


def resumption(session: Session, cli_version: str) -> Resumption | None:
    """How this run's CLI session starts; None when continuity is off or does not apply."""
    store = store_for(session)
    if not store.enabled or session.mode != Mode.IMPLEMENT:
        return None
    fresh = Conversation(str(uuid.uuid4()))
    kept = store.find(thread_of(session))
    if kept is None:
        return Resumption(fresh, cli_version, "")
    earlier = f"the [earlier session]({kept.link})" if kept.link else "the earlier session"
    if session.request.fresh:
        note = f"🆕 Started fresh, as asked: {earlier} was not used."
        return Resumption(fresh, cli_version, note)
    try:
        transcript = usable(kept, cli_version)
    except ConversationError as exc:
        note = f"🆕 Started fresh: the transcript of {earlier} could not be used ({exc})."
        return Resumption(fresh, cli_version, note)
    resumed = Conversation(kept.cli_session, transcript)
    return Resumption(resumed, cli_version, f"🔁 Continued {earlier} on this thread.")


def usable(kept: Kept, running: str) -> bytes:
    """The kept transcript, checked again; ConversationError saying why it cannot be resumed."""
    if kept.problem:
        raise ConversationError(kept.problem)
    if kept.transcript is None:
        raise ConversationError("the stored copy is corrupt")
    written_by = kept.cli_version
    if written_by != running:
        raise ConversationError(
            f"it was written by Claude Code {written_by or 'of an unknown version'}, "
            f"this is {running or 'an unknown version'}"
        )
    clean, _ = checked(kept.transcript, kept.cli_session, written_by)
    return clean


def resume_refused(run: SandboxRun) -> bool:
    """The CLI refused `--resume` before any turn (it found no conversation it could load)."""
    resumed = run.outcome
    refusal = any(e.startswith("No conversation found") for e in resumed.errors)
    return resumed.is_error and refusal and not resumed.actions


def started_over(resumed: Resumption) -> Resumption:
    note = "🆕 Started fresh: Claude Code could not resume the earlier session's transcript."
    return Resumption(Conversation(str(uuid.uuid4())), resumed.cli_version, note)


def keep(session: Session, resumed: Resumption, run: SandboxRun, link: str) -> None:
    """Store what this run's CLI wrote for the thread's next session; a transcript that cannot
    be used is recorded as such, so that the next session says why it starts fresh."""
    try:
        _keep(session, resumed, run, link)
    except RedisError as exc:  # the work is done; only the next session's memory is lost
        log.warning("session %s: transcript not kept (%s)", session.id, type(exc).__name__)


def _keep(session: Session, resumed: Resumption, run: SandboxRun, link: str) -> None:
    store, thread = store_for(session), thread_of(session)
    cli_session = resumed.conversation.cli_session
    problem = run.transcript_problem
    if run.transcript is not None:
        try:
            clean, redacted = checked(run.transcript, cli_session, resumed.cli_version)
        except ConversationError as exc:
            problem = str(exc)
        else:
            if redacted:
                log.warning("session %s: %d secret-shaped strings redacted", session.id, redacted)
            if store.keep(thread, cli_session, resumed.cli_version, link, clean):
                return
            problem = "it was larger than TRANSCRIPT_MAX_SIZE"
    log.info("session %s: transcript not kept (%s)", session.id, problem)
    store.keep(thread, cli_session, resumed.cli_version, link, b"", problem)
