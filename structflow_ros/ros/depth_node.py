"""ROS 2 node `depth_node`: monocular depth for one camera, RViz- and depth_image_proc-ready.

    ros2 run structflow depth_node --ros-args --params-file config/structflow.yaml \
        -r image:=/camera/image_raw -r camera_info:=/camera/camera_info
    ros2 run structflow depth_node --lifecycle ...   # a managed node: starts unconfigured

Subscribes `image` (sensor_msgs/Image, or CompressedImage with input_compressed:=true) and
`camera_info`; publishes depth in metres on `depth` (depth_mode scale or camera_height) or
unitless on `depth/relative` (relative), `depth/colored`, `depth/camera_info`, `depth/points`
(metres only), each with the input image's header (ros/outputs.py), and /diagnostics.

Managed (`--lifecycle`, launch `lifecycle:=true`): configure loads the weights and backend and
makes the publishers; activate subscribes and publishes; deactivate stops both and pauses
adaptation, keeping the model; cleanup releases it all. Unmanaged, it configures and activates
at once. Services and /diagnostics answer in every state.

This module only translates messages. The per-frame path (swap, predict, camera, units, pairs)
is online/pipeline.py, built with the weights, the server and adaptation by online/stack.py;
the services' work is online/control.py. Threads: the executor (images, the diagnostics timer;
the services in a reentrant group, their slow work on its own worker), one inference thread
(the image callback only drops the frame into a single-slot, drop-oldest buffer), the server's
converter thread and, with adapt:=true, the adaptation thread.
"""
import sys
import threading
import time

import rclpy
import torch
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rcl_interfaces.msg import SetParametersResult
from diagnostic_msgs.msg import DiagnosticStatus
from std_srvs.srv import SetBool, Trigger

from structflow_ros.core.inference import resolve_device
from structflow_ros.data import image_codec
from structflow_ros.online.control import ServingControl
from structflow_ros.online.frame_slot import LatestFrames
from structflow_ros.online.pipeline import FramePipeline, process_frames
from structflow_ros.online.server import resolve_weights_path
from structflow_ros.online.stack import StackError, stack_from_parameters
from structflow_ros.online.units import DEPTH_TOPICS
from structflow_ros.ros.camera_channel import CameraChannel
from structflow_ros.ros.diagnostics import (DiagnosticBounds, NodeDiagnostics, hardware_id,
                                            serving_health)
from structflow_ros.ros.outputs import DepthOutputs
from structflow_ros.ros.params import LIVE_OUTPUT_PARAMETERS, PARAMETERS, validate
from structflow_ros.ros.qos import IncompatibleQosWarner, make_qos

INFERENCE_THREAD_NAME = 'structflow-inference'
IDLE_POLL_S = 0.05  # how often the idle inference thread looks for a new weight version
# Executor threads: images and the diagnostics timer (the default, mutually exclusive group),
# one per slow-call kind that may be running (weights, save), one to answer everything else at
# once (busy replies, enable, parameters) while those run.
EXECUTOR_THREADS = 4
SERVICE_QUEUE_DEPTH = 100  # a burst of calls (a script retrying in a loop) is each answered
WARN_PERIOD_S = 5.0


class StartupError(RuntimeError):
    """The node cannot start (weights, device, parameters); the message says what to fix."""


class DepthServing:
    """The node's work, shared by DepthNode and ManagedDepthNode (mixed into an rclpy node)."""

    def _init_serving(self):
        self.control = self.device = None
        self._frames = self._thread = None
        self.active = False
        self._adapt_enabled = True  # the adapters' own switch, kept while inactive
        self._last_warned = {}
        self.add_on_set_parameters_callback(self._on_set_parameters)
        # While declaring, a missing weights file is left to configure, whose error names the
        # file and the reason in one line.
        self._declaring = True
        try:
            for spec in PARAMETERS:
                self.declare_parameter(spec.name, spec.default, spec.descriptor())
        except Exception as error:  # rclpy's Invalid*Parameter*Exception family
            raise StartupError(f'invalid parameter: {error}') from None
        self._declaring = False
        self.channels = [CameraChannel(name) for name in self._param('cameras')]
        self._qos_warner = IncompatibleQosWarner(self.get_logger())
        # Services in a reentrant group: a second request while a reload or a save runs is
        # taken by another executor thread and answered 'busy' at once (SlowCalls), so image
        # callbacks always find a thread.
        group = ReentrantCallbackGroup()
        qos = QoSProfile(depth=SERVICE_QUEUE_DEPTH, reliability=ReliabilityPolicy.RELIABLE)
        self._service_handles = [
            self.create_service(kind, name, handler, qos_profile=qos, callback_group=group)
            for kind, name, handler in ((Trigger, '~/reload_weights', self._on_reload),
                                        (SetBool, '~/adaptation/enable', self._on_adapt_enable),
                                        (Trigger, '~/adaptation/reset', self._on_adapt_reset),
                                        (Trigger, '~/adaptation/save', self._on_adapt_save))]
        self.diagnostics = NodeDiagnostics(self, self._param('diagnostics_period'), [
            (channel.label, lambda c=channel: self.diagnostics_snapshot(c), self._health,
             lambda c=channel: c.stats.rates() if self.active else {})
            for channel in self.channels], self._bounds, 'none')

    def _configure(self):
        """Weights, backend, device, publishers, the inference thread (StartupError: why not).
        One model for every camera; with adaptation, each camera adapts its own copy."""
        if self._param('threads') > 0:
            torch.set_num_threads(self._param('threads'))
        try:
            self.device = resolve_device(self._param('device'))
            for channel in self.channels:
                shared = self.channels[0].stack if not self._param('adapt') else None
                if shared is not None:
                    channel.stack, channel.pipeline = shared, FramePipeline(shared.server)
                    continue
                name = self.get_fully_qualified_name() + (f'/{channel.name}' if channel.name
                                                          else '')
                channel.stack, self.weights_path = stack_from_parameters(
                    self._param, name, self.device, self._log)
                channel.pipeline = channel.stack.pipeline
        except (ValueError, StackError) as error:
            self._cleanup()
            raise StartupError(str(error)) from None
        for stack in self.stacks:
            if stack.adaptation_refused:  # depth is the product: serve, never adapt elsewhere
                self.get_logger().error(f'adaptation not started: {stack.adaptation_refused}; '
                                        'serving without it')
        self.diagnostics.set_hardware_id(hardware_id(self.device))
        self.control = [ServingControl(stack, lambda: self._thread.is_alive(), self._log)
                        for stack in self.stacks]
        out_reliability = self._param('output_qos_reliability')
        out_qos = make_qos(out_reliability, 2)
        for channel in self.channels:
            channel.outputs = DepthOutputs(lambda kind, topic, prefix=channel.prefix: (
                self._create_output(kind, prefix + topic, out_qos, event_callbacks=(
                    self._qos_warner.publisher(prefix + topic, out_reliability)))),
                self._destroy_output)
        self._frames = LatestFrames()
        self._thread = threading.Thread(target=self._inference_loop, name=INFERENCE_THREAD_NAME,
                                        daemon=True)
        self._thread.start()
        for stack in self.stacks:
            if stack.adapter is not None:
                stack.adapter.set_enabled(False)  # until active: no frames, nothing to learn
                stack.adapter.start()

    @property
    def stacks(self):
        """The distinct serving stacks (one, or one per camera with adaptation)."""
        stacks = []
        for channel in self.channels:
            if channel.stack is not None and all(channel.stack is not s for s in stacks):
                stacks.append(channel.stack)
        return stacks

    def _activate(self):
        compressed = self._param('input_compressed')
        if compressed and not image_codec.JPEG_DAMAGE_DETECTED:
            self.get_logger().warning(
                'simplejpeg is not installed: JPEGs are decoded by OpenCV, which serves a '
                'damaged JPEG (cut, then closed with an end marker) with the lost part grey '
                'instead of refusing it; pip install simplejpeg (requirements.txt)')
        for index, channel in enumerate(self.channels):
            channel.subscribe(self, lambda msg, i=index: self._on_image(i, msg),
                              self._param('qos_reliability'), self._param('qos_depth'),
                              compressed, self._qos_warner)
        for stack in self.stacks:
            if stack.adapter is not None:
                stack.adapter.set_enabled(self._adapt_enabled)
        self.active = True
        mode = self._param('depth_mode')
        server = self.channels[0].stack.server
        adapters = [stack.adapter for stack in self.stacks if stack.adapter is not None]
        refused = self.channels[0].stack.adaptation_refused
        self.get_logger().info(
            f'serving {self.weights_path} (version {server.served.version}) on {self.device} '
            f'with backend {server.backend}; '
            + '; '.join(f'image: {c.image_topic} -> {c.outputs.topic_name(DEPTH_TOPICS[mode])}'
                        for c in self.channels)
            + f' (depth_mode {mode}, {"compressed" if compressed else "raw"} input); '
            'adaptation ' + (
                'on (state in ' + ', '.join(str(a.state_dir.directory) for a in adapters)
                + f'; {adapters[0].resumed})' if adapters
                else f'off ({refused})' if refused else 'off (adapt:=true to enable)'))

    def _deactivate(self):
        self.active = False
        for index, channel in enumerate(self.channels):
            channel.unsubscribe(self)
            self._frames.discard(index)  # taken in before: not published any more
        for stack in self.stacks:
            if stack.adapter is not None:
                self._adapt_enabled = stack.adapter.enabled
                stack.adapter.set_enabled(False)

    def _cleanup(self):
        """Back to unconfigured: threads stopped, models and publishers released (idempotent)."""
        if self.active:
            self._deactivate()
        if self._frames is not None:
            self._frames.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        for stack in self.stacks:
            stack.close()
        for channel in self.channels:
            if channel.outputs is not None:
                channel.outputs.destroy()
            channel.stack = channel.pipeline = channel.outputs = None
        self.control = self._thread = None

    # The first camera's parts (a one-camera node: its only camera).
    @property
    def stack(self):
        return self.channels[0].stack

    @property
    def server(self):
        return self.stack.server if self.stack is not None else None

    @property
    def adapter(self):
        return self.stack.adapter if self.stack is not None else None

    @property
    def pipeline(self):
        return self.channels[0].pipeline

    @property
    def weight_store(self):
        return self.stack.store

    @property
    def stats(self):
        return self.channels[0].stats

    @property
    def outputs(self):
        return self.channels[0].outputs

    @property
    def _camera_info(self):
        return self.channels[0].camera_info

    # -- parameters ----------------------------------------------------------------------------
    def _param(self, name):
        return self.get_parameter(name).value

    def _bounds(self):
        return DiagnosticBounds(self._param('diagnostics_min_rate'),
                                self._param('diagnostics_max_rate'),
                                self._param('diagnostics_latency_warn_ms'),
                                self._param('diagnostics_latency_error_ms'))

    def _on_set_parameters(self, parameters):
        current = {name: param.value for name, param in self._parameters.items()}
        incoming = {param.name: param.value for param in parameters}
        merged = {**current, **incoming}
        for param in parameters:
            if param.type_ == Parameter.Type.NOT_SET or (self._declaring
                                                         and param.name == 'weights'):
                continue
            reason = validate(param.name, param.value, merged)
            if reason:
                self.get_logger().warning(f'rejected parameter {param.name}: {reason}')
                return SetParametersResult(successful=False, reason=reason)
        for stack in self.stacks if not self._declaring else ():
            if stack.adapter is not None and 'adapt_duty_cycle' in incoming:
                stack.adapter.config.duty_cycle = incoming['adapt_duty_cycle']  # read per step
            if stack.adapter is not None and 'adapt_lr' in incoming:
                self.get_logger().info(stack.adapter.set_lr(incoming['adapt_lr']))
        return SetParametersResult(successful=True)

    # -- callbacks (executor threads): never any heavy work here --------------------------------
    def _on_image(self, index, msg):
        now = time.monotonic()
        stats = self.channels[index].stats
        stats.record_input(now)
        if self._frames.put(index, (msg, now)):
            stats.record_stale()

    def _answer(self, service, response, call):
        """Fill `response` from `call(control)` -> (ok, message) for every stack (one, or one
        per adapting camera); any exception becomes a failed reply naming it (a handler is
        total: the node answers and goes on serving)."""
        try:
            if self.control is None:
                ok, message = False, ('the node is not configured (lifecycle state unconfigured): '
                                      f'ros2 lifecycle set {self.get_fully_qualified_name()} '
                                      'configure')
            else:
                answers = [call(control) for control in self.control]
                ok = all(answer[0] for answer in answers)
                names = [c.name for c in self.channels] if len(answers) > 1 else ['']
                message = '; '.join(f'{name}: {text}' if name else text
                                    for name, (_, text) in zip(names, answers))
        except Exception as error:  # noqa: BLE001 - total: every failure becomes a reply
            version = self.server.served.version if self.server is not None else 0
            ok, message = False, (f'failed: {type(error).__name__}: {error}; the node goes on '
                                  f'serving version {version}')
        response.success, response.message = bool(ok), str(message)
        if message.startswith('busy:'):  # a burst of calls must not flood the log
            self._warn_throttled(f'busy:{service}', f'{service}: {message}')
        elif not ok:
            self.get_logger().error(f'{service}: {message}')
        return response

    def _on_reload(self, request, response):
        path = resolve_weights_path(self._param('weights'))  # re-read: it may have been set
        self._answer('~/reload_weights', response, lambda control: control.reload(path))
        if response.success:
            self.weights_path = path
        return response

    def _on_adapt_enable(self, request, response):
        return self._answer('~/adaptation/enable', response,
                            lambda control: control.enable(request.data))

    def _on_adapt_reset(self, request, response):
        return self._answer('~/adaptation/reset', response, lambda control: control.reset())

    def _on_adapt_save(self, request, response):
        return self._answer('~/adaptation/save', response, lambda control: control.save())

    # -- inference thread -----------------------------------------------------------------------
    def _inference_loop(self):
        self.stack.enter_serving_thread()
        frames, stacks = self._frames, self.stacks
        while True:
            items = frames.get(timeout=IDLE_POLL_S)
            if frames.closed:
                return
            for stack in stacks:
                stack.pipeline.between_frames()  # a new version serves without a frame too
            if not items:
                continue
            try:
                self._process_frames(items)
            except Exception as error:  # noqa: BLE001 - keep serving, but say what failed
                if frames.closed or not rclpy.ok(context=self.context):
                    return  # shutting down: publishers are gone
                for index in items:
                    self.channels[index].stats.record_error(f'{type(error).__name__}: {error}')
                self._warn_throttled('error', f'frame failed: {type(error).__name__}: {error}')

    def _process(self, msg, received):
        """One frame of the (first) camera, in this thread (tests, tools)."""
        self._process_frames({0: (msg, received)})

    def _process_frames(self, items):
        """{camera index: (msg, received)}: the frames that arrived together, computed together
        (online.pipeline.process_frames) and published per camera."""
        started = time.monotonic()
        settings = {name: self._param(name) for name in LIVE_OUTPUT_PARAMETERS}
        taken = []
        for index, (msg, received) in items.items():
            channel = self.channels[index]
            job = channel.decode(msg, settings, self._log, self._warn_throttled)
            if job is not None:
                taken.append((channel, job, msg.header, received))
        if not taken:
            return
        results = process_frames([job for _, job, _, _ in taken])
        for (channel, job, header, received), result in zip(taken, results):
            channel.publish(result, job, header, settings, received, started,
                            self._warn_throttled)

    # -- diagnostics, logging -------------------------------------------------------------------
    def _warn_throttled(self, key, text, period=WARN_PERIOD_S):
        """Warn at most once per `period` per kind of problem (not per call site)."""
        now = time.monotonic()
        if now - self._last_warned.get(key, -1e9) >= period:
            self._last_warned[key] = now
            self.get_logger().warning(text)

    def diagnostics_snapshot(self, channel=None):
        """A camera's `depth` status of /diagnostics (the first camera's by default), as a
        dict (also for in-process benchmarks)."""
        channel = channel or self.channels[0]
        values = channel.stats.snapshot()
        values['lifecycle_state'] = ('active' if self.active else 'inactive'
                                     if self.control is not None else 'unconfigured')
        values['device'] = str(self.device)
        values['depth_mode'] = self._param('depth_mode')
        values['image_topic'] = channel.image_topic
        stack = channel.stack
        if stack is None:
            return values
        served = stack.server.served
        last = values['model_version']  # what computed the last depth
        values.update(served.describe())
        values.update({
            'model_version': last,
            'serving_version': served.version,
            'cameras_in_process': len(self.channels),
            'depth_topic': channel.outputs.topic_name(DEPTH_TOPICS[values['depth_mode']]),
            'depth_unit': channel.pipeline.scaler.unit,
            'input_bit_depth': self._param('input_bit_depth') or channel.bit_depth.bits,
            'depth_scale_in_use': channel.pipeline.scaler.last_scale or 0.0,
            'camera_info_received': getattr(channel.camera_info, 'received', False),
            'camera_info_pairing': getattr(channel.camera_info, 'pairing', ''),
            'incompatible_qos_topics': ','.join(t for _, t in sorted(self._qos_warner.warned)),
            'last_swap_error': stack.server.swap_error[1],
            'diagnostics': self.diagnostics.backend,
        })
        if stack.adapter is not None:
            values.update(stack.adapter.status())
        else:
            values['adaptation_enabled'] = False
            if stack.adaptation_refused:
                values['adaptation_refused'] = stack.adaptation_refused
        return values

    def _health(self, values):
        if values['lifecycle_state'] != 'active':
            loaded = ' (model loaded)' if self.control is not None else ''
            return DiagnosticStatus.OK, (f"{values['lifecycle_state']}: not subscribed, not "
                                         f'publishing{loaded}')
        return serving_health(values, self._thread is not None and self._thread.is_alive())

    def stop(self):
        """Stop the inference, converter and adaptation threads (idempotent); the node stays
        valid until destroy_node."""
        self._cleanup()

    def destroy_node(self):
        self.stop()
        return super().destroy_node()  # rclpy's Node or LifecycleNode, next in the MRO

    def _log(self, level, text):
        if not rclpy.ok(context=self.context):
            return  # shutting down: the adaptation thread may still finish a step
        # One call site per severity: rclpy refuses a call site whose severity changes.
        logger = self.get_logger()
        if level == 'error':
            logger.error(text)
        elif level == 'warning':
            logger.warning(text)
        else:
            logger.info(text)


class DepthNode(DepthServing, Node):
    """Depth from one camera, serving from construction; see the module docstring."""

    def __init__(self, node_name='depth_node', **kwargs):
        Node.__init__(self, node_name, **kwargs)
        try:
            self._init_serving()
            self._configure()
            self._activate()
        except BaseException:
            self.destroy_node()
            raise

    def _create_output(self, msg_type, topic, qos, **kwargs):
        return self.create_publisher(msg_type, topic, qos, **kwargs)

    def _destroy_output(self, publisher):
        self.destroy_publisher(publisher)


class ManagedDepthNode(DepthServing, LifecycleNode):
    """The same node as a lifecycle (managed) node: it starts unconfigured."""

    def __init__(self, node_name='depth_node', **kwargs):
        LifecycleNode.__init__(self, node_name, **kwargs)
        try:
            self._init_serving()
        except BaseException:
            self.destroy_node()
            raise

    def _create_output(self, msg_type, topic, qos, **kwargs):
        return self.create_lifecycle_publisher(msg_type, topic, qos, **kwargs)

    def _destroy_output(self, publisher):
        self.destroy_lifecycle_publisher(publisher)

    def on_configure(self, state):
        try:
            self._configure()
        except StartupError as error:
            self.get_logger().error(f'configure failed: {error}')
            self._cleanup()
            return TransitionCallbackReturn.FAILURE
        return super().on_configure(state)

    def on_activate(self, state):
        self._activate()
        return super().on_activate(state)  # the lifecycle publishers publish from now

    def on_deactivate(self, state):
        self._deactivate()
        return super().on_deactivate(state)

    def on_cleanup(self, state):
        self._cleanup()
        return super().on_cleanup(state)

    def on_shutdown(self, state):
        self._cleanup()
        return super().on_shutdown(state)


if __name__ == '__main__':  # `python -m structflow_ros.ros.depth_node` (the tests, the tools)
    from structflow_ros.ros.entry import run_depth_node
    sys.exit(run_depth_node())
