"""Serving statistics (thread-safe, no ROS) and their diagnostic_msgs form.

The callback thread counts inputs, the inference thread counts outputs and times each frame, the
diagnostics timer and benchmarks read `snapshot()`. Times are monotonic seconds; latencies kept
for the last `window` frames.
"""
import collections
import threading
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue


class RateMeter:
    """Events per second over the last `window_s` seconds (0 when fewer than 2 events)."""

    def __init__(self, window_s=2.0):
        self.window_s = window_s
        self._times = collections.deque()

    def tick(self, now):
        self._times.append(now)
        self._trim(now)

    def _trim(self, now):
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()

    def rate(self, now):
        self._trim(now)
        if len(self._times) < 2:
            return 0.0
        return (len(self._times) - 1) / max(self._times[-1] - self._times[0], 1e-9)


def percentiles_ms(values, qs=(50, 95)):
    if not values:
        return [float('nan')] * len(qs)
    return [float(v) * 1e3 for v in np.percentile(np.asarray(values), qs)]


class ServingStats:
    """Counters and timings of the node; every method may be called from any thread."""

    def __init__(self, window=300):
        self._lock = threading.Lock()
        self.frames_in = 0
        self.frames_out = 0
        self.dropped_stale = 0
        self.dropped_bad_input = 0
        self.dropped_no_scale = 0
        self.processing_errors = 0
        self.bad_input_by_kind = collections.Counter()
        self.last_bad_input = ''
        self.last_error = ''
        self.last_version = 0  # model version that computed the last published depth
        self._input_rate, self._output_rate = RateMeter(), RateMeter()
        # Per frame, seconds: the model (DepthPredictor.predict: resize, forward, resize back);
        # waiting in the slot (callback -> worker pick-up; grows when the model is slower than
        # the camera); the worker's whole work on it (decode -> last output published).
        self._inference = collections.deque(maxlen=window)
        self._queue = collections.deque(maxlen=window)
        self._work = collections.deque(maxlen=window)

    def record_input(self, now=None):
        with self._lock:
            self.frames_in += 1
            self._input_rate.tick(time.monotonic() if now is None else now)

    def record_stale(self, count=1):
        with self._lock:
            self.dropped_stale += count

    def record_bad_input(self, kind, reason):
        with self._lock:
            self.dropped_bad_input += 1
            self.bad_input_by_kind[kind] += 1
            self.last_bad_input = f'{kind}: {reason}'

    def record_no_scale(self):
        with self._lock:
            self.dropped_no_scale += 1

    def record_error(self, reason):
        with self._lock:
            self.processing_errors += 1
            self.last_error = reason

    def record_output(self, version, inference_s, queue_s, work_s, now=None):
        with self._lock:
            self.frames_out += 1
            self.last_version = version
            self._inference.append(inference_s)
            self._queue.append(queue_s)
            self._work.append(work_s)
            self._output_rate.tick(time.monotonic() if now is None else now)

    def snapshot(self):
        """A plain dict of everything (rates in Hz, latencies in ms)."""
        now = time.monotonic()
        with self._lock:
            inference, queue, work = list(self._inference), list(self._queue), list(self._work)
            snap = {
                'input_rate_hz': self._input_rate.rate(now),
                'output_rate_hz': self._output_rate.rate(now),
                'frames_in': self.frames_in,
                'frames_out': self.frames_out,
                'dropped_stale': self.dropped_stale,
                'dropped_bad_input': self.dropped_bad_input,
                'dropped_no_scale': self.dropped_no_scale,
                'processing_errors': self.processing_errors,
                'bad_input_by_kind': dict(self.bad_input_by_kind),
                'last_bad_input': self.last_bad_input,
                'last_error': self.last_error,
                'model_version': self.last_version,
            }
        snap['inference_ms_p50'], snap['inference_ms_p95'] = percentiles_ms(inference)
        snap['queue_ms_p50'], snap['queue_ms_p95'] = percentiles_ms(queue)
        snap['processing_ms_p50'], snap['processing_ms_p95'] = percentiles_ms(
            [q + w for q, w in zip(queue, work)])  # image received -> last output published
        # What the node adds to the model per frame: decoding, units, messages, publishing.
        overhead = [w - i for w, i in zip(work, inference)]
        snap['overhead_ms_p50'], snap['overhead_ms_p95'] = percentiles_ms(overhead)
        return snap


def _format(value):
    if isinstance(value, float):
        return f'{value:.2f}' if np.isfinite(value) else 'n/a'
    if isinstance(value, dict):
        return ', '.join(f'{k}={v}' for k, v in sorted(value.items())) or 'none'
    return str(value)


def make_diagnostic_array(stamp, name, hardware_id, snapshot, extra, level=None, message=''):
    """One DiagnosticStatus with every snapshot/extra entry as a key-value (strings)."""
    status = DiagnosticStatus()
    status.name = name
    status.hardware_id = hardware_id
    status.level = DiagnosticStatus.OK if level is None else level
    status.message = message
    status.values = [KeyValue(key=key, value=_format(value))
                     for key, value in list(snapshot.items()) + list(extra.items())]
    array = DiagnosticArray()
    array.header.stamp = stamp
    array.status = [status]
    return array


def serving_health(values, inference_alive):
    """(level, message) of the node's status from its diagnostics values."""
    if values['frames_in'] == 0:
        return DiagnosticStatus.WARN, (f"no image received on {values['image_topic']} (check "
                                       'the topic remap and QoS)')
    if not inference_alive:
        return DiagnosticStatus.ERROR, 'inference thread stopped'
    if values['output_rate_hz'] == 0 and values['input_rate_hz'] > 0:
        return DiagnosticStatus.WARN, 'images arrive but no depth is published'
    return DiagnosticStatus.OK, 'serving'
