"""Drop-oldest hand-over between the subscription callbacks and the one inference thread.

image_pipeline's pattern: a callback only stores the newest frame of its camera and returns;
the inference thread takes what is there when it is free. A frame that is replaced before the
worker took it is stale (the worker would only add latency computing it) and is counted, never
queued. One slot per camera and one waiter for all of them: `get` hands over every camera's
newest frame at once, so frames that arrived together are served together (one batch).
"""
import threading
import time


class LatestFrames:
    """At most one item per key (camera); `put` replaces (and counts) an untaken one, `get`
    waits for any and takes them all."""

    def __init__(self):
        self._condition = threading.Condition()
        self._items = {}
        self._closed = False
        self.dropped = 0

    def put(self, key, item):
        """Store `item` for `key`; return True when it replaced an item the worker never
        took."""
        with self._condition:
            if self._closed:
                return False
            replaced = key in self._items
            if replaced:
                self.dropped += 1
            self._items[key] = item
            self._condition.notify()
            return replaced

    def get(self, timeout=None):
        """Take every key's newest item ({key: item}), waiting up to `timeout` s for one; {} on
        timeout or after close()."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            while not self._items and not self._closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return {}
                self._condition.wait(remaining)
            items, self._items = self._items, {}
            return items

    def discard(self, key):
        """Drop `key`'s untaken item (its camera stopped: nothing more is published for it)."""
        with self._condition:
            self._items.pop(key, None)

    def close(self):
        """Wake the worker for good: `get` returns {} from now on, `put` is ignored."""
        with self._condition:
            self._closed = True
            self._items = {}
            self._condition.notify_all()

    @property
    def closed(self):
        return self._closed
