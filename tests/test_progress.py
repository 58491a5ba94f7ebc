"""The tracking comment's progress edits off the session's path, against a real Redis pacer."""

from __future__ import annotations

import threading
import time

from redis import Redis

from jobs.github.pacing import Pacer
from jobs.github.progress import ProgressWriter
from tests.support import wait_for


class Comment:
    """What the writer edits: the session's state, rendered when the edit is made."""

    def __init__(self) -> None:
        self.state = "preparing"
        self.edits: list[str] = []
        self.hold: threading.Event | None = None  # an edit in flight until it is set
        self.entered = threading.Event()  # an edit has begun (and rendered what it shows)

    def edit(self) -> None:
        shown = self.state
        self.entered.set()
        if self.hold is not None:
            self.hold.wait(30)
        self.edits.append(shown)


def hold_turns(redis: Redis, installation: int, seconds: float) -> None:
    """The installation's next write turn `seconds` away, as if another session had one."""
    redis.set(f"claudecluster:pace:{installation}:last", str(time.time() + seconds), ex=120)


def test_steps_overtaken_before_their_turn_make_one_edit_of_the_newest(redis_url):
    comment = Comment()
    comment.hold = threading.Event()
    writer = ProgressWriter(comment.edit, Pacer(Redis.from_url(redis_url), 31), "t1", settle=0)
    writer.step()  # the turn is free: this edit starts at once, and is held in flight
    assert comment.entered.wait(30)
    comment.state = "running"
    writer.step()
    comment.state = "pushing"
    writer.step()
    comment.hold.set()
    wait_for(lambda: len(comment.edits) == 2, 30, what="the second edit")
    assert comment.edits == ["preparing", "pushing"]  # "running" was overtaken: never shown
    writer.close()
    writer.step()  # after close: the final edit is the last word
    assert comment.edits == ["preparing", "pushing"]
    assert writer._thread is not None and not writer._thread.is_alive()


def test_close_drops_a_step_still_waiting_for_its_turn(redis_url):
    redis = Redis.from_url(redis_url)
    comment = Comment()
    hold_turns(redis, 32, 60)  # far beyond the test: only close can end the wait
    writer = ProgressWriter(comment.edit, Pacer(redis, 32), "t2", settle=0)
    writer.step()
    writer.close()
    assert writer._thread is not None and not writer._thread.is_alive()
    assert comment.edits == []


def test_close_waits_for_an_edit_in_flight(redis_url):
    comment = Comment()
    comment.hold = threading.Event()
    writer = ProgressWriter(comment.edit, Pacer(Redis.from_url(redis_url), 33), "t3", settle=0)
    writer.step()
    closing = threading.Thread(target=writer.close)
    assert comment.entered.wait(30)
    closing.start()
    closing.join(0.5)
    assert closing.is_alive(), "close returned while an edit was still being made"
    comment.hold.set()
    closing.join(30)
    assert not closing.is_alive() and comment.edits == ["preparing"]


def test_an_action_without_a_free_turn_is_dropped_not_waited_for(redis_url):
    redis = Redis.from_url(redis_url)
    comment = Comment()
    hold_turns(redis, 34, 60)
    writer = ProgressWriter(comment.edit, Pacer(redis, 34), "t4")
    writer.action()
    wait_for(lambda: not writer._pending, 10, what="the action to be dropped")
    redis.delete("claudecluster:pace:34:last")  # the turn is free again
    comment.state = "running"
    writer.action()
    wait_for(lambda: comment.edits, 10, what="the free turn's edit")
    writer.close()
    assert comment.edits == ["running"]


def test_a_step_over_before_it_settles_is_never_shown(redis_url):
    # Pushing is over within a second as a rule: its edit would only hold the final one back.
    comment = Comment()
    writer = ProgressWriter(comment.edit, Pacer(Redis.from_url(redis_url), 35), "t5", settle=60)
    writer.step()
    writer.close()  # the final edit, well within the settle time
    assert writer._thread is not None and not writer._thread.is_alive()
    assert comment.edits == []
    settled = ProgressWriter(comment.edit, Pacer(Redis.from_url(redis_url), 36), "t6", settle=0)
    settled.step()
    wait_for(lambda: comment.edits, 30, what="a settled step's edit")
    settled.close()
    assert comment.edits == ["preparing"]
