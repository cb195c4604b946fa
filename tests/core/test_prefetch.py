"""The reader thread that keeps the next batch ready: order, errors, early stop, bounded."""

from __future__ import annotations

import threading
import time

import pytest

from sleepsound.core.prefetch import prefetch


def test_items_come_in_order_and_all_arrive():
    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))
    assert list(prefetch([], depth=1)) == []


def test_a_reader_error_is_raised_in_the_consumer_after_the_items_before_it():
    def items():
        yield 1
        yield 2
        raise OSError("night-7.edf: truncated record 12")

    got = []
    with pytest.raises(OSError, match=r"night-7\.edf"):
        for item in prefetch(items()):
            got.append(item)
    assert got == [1, 2]


def test_the_reader_runs_at_most_depth_ahead_and_stops_with_the_consumer():
    produced = []

    def items():
        for i in range(1000):
            produced.append(i)
            yield i

    stream = prefetch(items(), depth=2)
    assert next(stream) == 0
    time.sleep(0.3)
    assert len(produced) <= 4  # the one taken, two queued, one waiting to be put
    stream.close()  # the consumer stops early: the reader thread ends
    time.sleep(0.3)
    assert not any(t.name == "sleepsound-prefetch" and t.is_alive() for t in threading.enumerate())
    assert len(produced) <= 5
    with pytest.raises(ValueError, match="depth"):
        list(prefetch([1], depth=0))
