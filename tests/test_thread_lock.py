"""One session per issue or pull request: the next one waits its turn, against a real Redis."""

from __future__ import annotations

import threading
import time

import pytest
from redis import Redis

from jobs.common.queue import active_key
from jobs.session.thread import ThreadBusy, active


class Tracking:
    """Records what the session would have told the user while it waited."""

    def __init__(self) -> None:
        self.waited = 0

    def waiting(self) -> None:
        self.waited += 1


def test_second_session_waits_and_says_so(redis_url):
    redis = Redis.from_url(redis_url)
    order = []
    first_in = threading.Event()

    def first():
        with active(redis, "o/r#1", "s1", 30, Tracking().waiting):
            order.append("s1 start")
            first_in.set()
            time.sleep(0.5)
            order.append("s1 end")

    thread = threading.Thread(target=first)
    thread.start()
    first_in.wait(5)
    tracking = Tracking()
    with active(redis, "o/r#1", "s2", 30, tracking.waiting, poll=0.05):
        order.append("s2 start")
    thread.join()
    assert order == ["s1 start", "s1 end", "s2 start"]
    assert tracking.waited == 1
    assert redis.get(active_key("o/r#1")) is None


def test_other_threads_do_not_wait(redis_url):
    redis = Redis.from_url(redis_url)
    tracking = Tracking()
    with (
        active(redis, "o/r#1", "s1", 30, Tracking().waiting),
        active(redis, "o/r#2", "s2", 30, tracking.waiting),
    ):
        assert tracking.waited == 0


def test_a_busy_thread_past_the_timeout_is_an_error(redis_url):
    redis = Redis.from_url(redis_url)
    redis.set(active_key("o/r#3"), "stuck", ex=60)
    with (
        pytest.raises(ThreadBusy),
        active(redis, "o/r#3", "s9", 0, Tracking().waiting),
    ):
        pass
    assert redis.get(active_key("o/r#3")) == b"stuck", "someone else's mark is left alone"


def test_a_retry_of_the_same_session_reenters(redis_url):
    redis = Redis.from_url(redis_url)
    redis.set(active_key("o/r#4"), "s4", ex=60)
    with active(redis, "o/r#4", "s4", 30, Tracking().waiting):
        pass
    assert redis.get(active_key("o/r#4")) is None
