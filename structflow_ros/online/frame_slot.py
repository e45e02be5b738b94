"""A single-slot, drop-oldest hand-over between the subscription callback and the worker.

image_pipeline's pattern: the callback only stores the newest frame and returns; the inference
thread takes it when it is free. A frame that is replaced before the worker took it is stale
(the worker would only add latency computing it) and is counted, never queued.
"""
import threading
import time


class LatestFrameSlot:
    """Holds at most one item; `put` replaces (and counts) an untaken one, `get` waits."""

    def __init__(self):
        self._condition = threading.Condition()
        self._item = None
        self._closed = False
        self.dropped = 0

    def put(self, item):
        """Store `item`; return True when it replaced an item the worker never took."""
        with self._condition:
            if self._closed:
                return False
            replaced = self._item is not None
            if replaced:
                self.dropped += 1
            self._item = item
            self._condition.notify()
            return replaced

    def get(self, timeout=None):
        """Take the newest item, waiting up to `timeout` s; None on timeout or after close()."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            while self._item is None and not self._closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._condition.wait(remaining)
            item, self._item = self._item, None
            return item

    def close(self):
        """Wake the worker for good: `get` returns None from now on, `put` is ignored."""
        with self._condition:
            self._closed = True
            self._item = None
            self._condition.notify_all()

    @property
    def closed(self):
        return self._closed
