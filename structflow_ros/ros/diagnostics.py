"""Serving statistics (thread-safe, no ROS) and /diagnostics by the ROS convention.

The callback thread counts inputs, the inference thread counts outputs and times each frame, the
diagnostics timer and benchmarks read `snapshot()`. Times are monotonic seconds; latencies kept
for the last `window` frames.

/diagnostics (`NodeDiagnostics`): diagnostic_updater's Updater where it is installed (every
ROS 2 install has it), else the same statuses by a timer of our own. Four statuses, named
`<node>: <task>`, each with the node's hardware_id (device and processor): `depth` (the
serving state and every counter), `input rate` and `output rate` (diagnostic_updater
FrequencyStatus's levels and keys against diagnostics_min_rate / diagnostics_max_rate),
`latency` (image received -> last output published, p95, against the warn and error levels).
"""
import collections
import platform
import threading
import time
from dataclasses import dataclass

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.clock import Clock, ClockType

try:  # on every ROS 2 install (ros-<distro>-diagnostic-updater); not on PyPI
    import diagnostic_updater
except ImportError:  # pragma: no cover - depends on the install
    diagnostic_updater = None


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

    def events(self, now):
        """Events within the last window_s seconds."""
        self._trim(now)
        return len(self._times)


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

    def rates(self):
        """{'input rate': (Hz, events in the window, events since start, window s), 'output
        rate': ...} for the frequency statuses of /diagnostics."""
        now = time.monotonic()
        with self._lock:
            return {name: (meter.rate(now), meter.events(now), total, meter.window_s)
                    for name, meter, total in (
                        ('input rate', self._input_rate, self.frames_in),
                        ('output rate', self._output_rate, self.frames_out))}

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


@dataclass
class DiagnosticBounds:
    """What /diagnostics calls healthy (the node's diagnostics_* parameters)."""
    min_rate: float = 1.0  # Hz, input and output; below it (less the tolerance): WARN
    max_rate: float = 0.0  # Hz; 0 = no upper bound
    latency_warn_ms: float = 1000.0  # p95 image -> last output published
    latency_error_ms: float = 5000.0
    tolerance: float = 0.1  # FrequencyStatusParam's: bounds hold within this fraction


def rate_status(stat, rate, events, since_start, window_s, bounds):
    """diagnostic_updater.FrequencyStatus's levels, message and keys, from our RateMeter."""
    low = bounds.min_rate * (1 - bounds.tolerance)
    if events == 0:
        stat.summary(DiagnosticStatus.ERROR, 'No events recorded.')
    elif rate < low:
        stat.summary(DiagnosticStatus.WARN, 'Frequency too low.')
    elif bounds.max_rate > 0 and rate > bounds.max_rate * (1 + bounds.tolerance):
        stat.summary(DiagnosticStatus.WARN, 'Frequency too high.')
    else:
        stat.summary(DiagnosticStatus.OK, 'Desired frequency met')
    stat.add('Events in window', f'{events:d}')
    stat.add('Events since startup', f'{since_start:d}')
    stat.add('Duration of window (s)', f'{window_s:f}')
    stat.add('Actual frequency (Hz)', f'{rate:f}')
    if bounds.min_rate > 0:
        stat.add('Minimum acceptable frequency (Hz)', f'{low:f}')
    if bounds.max_rate > 0:
        high = bounds.max_rate * (1 + bounds.tolerance)
        stat.add('Maximum acceptable frequency (Hz)', f'{high:f}')
    return stat


def latency_status(stat, values, bounds):
    p95 = values['processing_ms_p95']
    if not np.isfinite(p95):
        stat.summary(DiagnosticStatus.OK, 'no frame served yet')
    elif p95 >= bounds.latency_error_ms:
        stat.summary(DiagnosticStatus.ERROR, f'p95 latency {p95:.0f} ms >= '
                     f'{bounds.latency_error_ms:g} ms')
    elif p95 >= bounds.latency_warn_ms:
        stat.summary(DiagnosticStatus.WARN, f'p95 latency {p95:.0f} ms >= '
                     f'{bounds.latency_warn_ms:g} ms')
    else:
        stat.summary(DiagnosticStatus.OK, f'p95 latency {p95:.0f} ms')
    for key in ('processing_ms_p50', 'processing_ms_p95', 'inference_ms_p50',
                'inference_ms_p95', 'queue_ms_p95'):
        stat.add(key, _format(values[key]))
    stat.add('warn at p95 (ms)', f'{bounds.latency_warn_ms:g}')
    stat.add('error at p95 (ms)', f'{bounds.latency_error_ms:g}')
    return stat


def hardware_id(device):
    """The device and its processor: 'cuda:0 NVIDIA H100 80GB HBM3', 'cpu AMD EPYC (avx2)'."""
    if device.type == 'cuda':
        import torch
        return f'{device} {torch.cuda.get_device_name(device)}'
    from structflow_ros.core.backends import cpu_class
    name = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as handle:
            name = next((line.split(':', 1)[1].strip() for line in handle
                         if line.startswith(('model name', 'Model'))), name)
    except OSError:
        pass
    isa = cpu_class()
    return f'{device} {name} ({isa})'


class _Status:
    """The part of diagnostic_updater.DiagnosticStatusWrapper the tasks use (fallback)."""

    def __init__(self, name, hardware_id):
        self.msg = DiagnosticStatus(name=name, hardware_id=hardware_id,
                                    level=DiagnosticStatus.ERROR, message='No message was set')

    def summary(self, level, message):
        self.msg.level, self.msg.message = level, message

    def add(self, key, value):
        self.msg.values.append(KeyValue(key=key, value=str(value)))


class NodeDiagnostics:
    """The node's /diagnostics, every `period` seconds of the steady clock.

    `cameras`: one (label, values, health, rates) per camera, label '' for a one-camera node
    or 'front ' before its status names; `values()` -> the `depth` status's key values (a
    dict), `health(values)` -> its (level, message), `rates()` -> {'input rate': (rate, events,
    since_start, window_s), 'output rate': ...} (empty while not active); `bounds()` ->
    DiagnosticBounds (live parameters).
    """

    TASKS = ('depth', 'input rate', 'output rate', 'latency')

    def __init__(self, node, period, cameras, bounds, hardware_id_text):
        self._cameras, self._bounds = list(cameras), bounds
        self.node, self.hardware_id = node, hardware_id_text
        self.updater = None
        self._snapshots = {}
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        if diagnostic_updater is not None:
            self.updater = diagnostic_updater.Updater(node, period)
            # Its timer runs on ROS time: with use_sim_time and no /clock yet (a bag not
            # playing) that never fires and hides the node's health. The steady clock does.
            # (self.updater.period: diagnostics_period unless diagnostic_updater.period is set.)
            node.destroy_timer(self.updater.timer)
            self.updater.timer = node.create_timer(self.updater.period, self.updater.update,
                                                   clock=steady)
            self.updater.node_name = node.get_fully_qualified_name()  # one per namespace
            self.updater.setHardwareID(hardware_id_text)
            for name, camera, task in self._tasks():
                self.updater.add(name, lambda stat, c=camera, t=task: self._run(c, t, stat))
            self.backend = 'diagnostic_updater'
        else:
            self._publisher = node.create_publisher(DiagnosticArray, '/diagnostics', 10)
            self._timer = node.create_timer(period, self.publish, clock=steady)
            self.backend = 'structflow (diagnostic_updater not installed)'

    def _tasks(self):
        """(status name, camera index, task) in publishing order: each camera's four."""
        return [(self._cameras[index][0] + task, index, task)
                for index in range(len(self._cameras)) for task in self.TASKS]

    def set_hardware_id(self, text):
        self.hardware_id = text
        if self.updater is not None:
            self.updater.setHardwareID(text)

    def _run(self, camera, task, stat):
        _, values, health, rates = self._cameras[camera]
        if task == 'depth':  # first task of each camera: one snapshot for its four
            self._snapshots[camera] = snapshot = values()
            level, message = health(snapshot)
            stat.summary(level, message)
            for key, value in snapshot.items():
                stat.add(key, _format(value))
            return stat
        if task == 'latency':
            return latency_status(stat, self._snapshots[camera], self._bounds())
        rate = rates().get(task)
        if rate is None:  # a managed node that is not active: nothing is expected
            stat.summary(DiagnosticStatus.OK, 'not active: no frames expected')
            return stat
        return rate_status(stat, *rate, self._bounds())

    def publish(self):
        """One update now (the fallback's timer; also with the updater)."""
        if self.updater is not None:
            self.updater.update()
            return
        array = DiagnosticArray()
        array.header.stamp = self.node.get_clock().now().to_msg()
        prefix = self.node.get_fully_qualified_name()
        array.status = [self._run(camera, task, _Status(f'{prefix}: {name}',
                                                        self.hardware_id)).msg
                        for name, camera, task in self._tasks()]
        self._publisher.publish(array)
