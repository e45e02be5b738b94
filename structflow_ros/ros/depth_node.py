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
from sensor_msgs.msg import CompressedImage, Image
from std_srvs.srv import SetBool, Trigger

from structflow_ros.core.inference import resolve_device
from structflow_ros.data import image_codec
from structflow_ros.online.control import ServingControl
from structflow_ros.online.frame_slot import LatestFrameSlot
from structflow_ros.online.pipeline import OUTPUT_SETTINGS, OutputSettings, frame_warnings
from structflow_ros.online.server import resolve_weights_path
from structflow_ros.online.stack import StackError, stack_from_parameters
from structflow_ros.online.units import DEPTH_TOPICS
from structflow_ros.ros import conversions
from structflow_ros.ros.camera_info_source import CameraInfoSource
from structflow_ros.ros.diagnostics import (DiagnosticBounds, NodeDiagnostics, ServingStats,
                                            hardware_id, serving_health)
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
        self.stats = ServingStats()
        self.stack = self.control = self.outputs = self.device = None
        self._slot = self._thread = self._image_sub = self._camera_info = None
        self.active = False
        self._adapt_enabled = True  # the adapter's own switch, kept while inactive
        self._last_warned = {}
        self._bit_depth = image_codec.BitDepthEstimator()  # input_bit_depth 0 (auto)
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
        self.diagnostics = NodeDiagnostics(
            self, self._param('diagnostics_period'), self.diagnostics_snapshot, self._health,
            lambda: self.stats.rates() if self.active else {}, self._bounds, 'none')

    def _configure(self):
        """Weights, backend, device, publishers, the inference thread (StartupError: why not)."""
        if self._param('threads') > 0:
            torch.set_num_threads(self._param('threads'))
        try:
            self.device = resolve_device(self._param('device'))
            self.stack, self.weights_path = stack_from_parameters(
                self._param, self.get_fully_qualified_name(), self.device, self._log)
        except (ValueError, StackError) as error:
            raise StartupError(str(error)) from None
        if self.stack.adaptation_refused:
            # Depth is the product: serve it, but never adapt in another camera's directory.
            self.get_logger().error(f'adaptation not started: {self.stack.adaptation_refused}; '
                                    'serving without it')
        self.diagnostics.set_hardware_id(hardware_id(self.device))
        self.control = ServingControl(self.stack, lambda: self._thread.is_alive(), self._log)
        out_reliability = self._param('output_qos_reliability')
        out_qos = make_qos(out_reliability, 2)
        self.outputs = DepthOutputs(
            lambda kind, topic: self._create_output(kind, topic, out_qos, event_callbacks=(
                self._qos_warner.publisher(topic, out_reliability))), self._destroy_output)
        self._slot = LatestFrameSlot()
        self._thread = threading.Thread(target=self._inference_loop, name=INFERENCE_THREAD_NAME,
                                        daemon=True)
        self._thread.start()
        if self.stack.adapter is not None:
            self.stack.adapter.set_enabled(False)  # until active: no frames, nothing to learn
            self.stack.adapter.start()

    def _activate(self):
        reliability = self._param('qos_reliability')
        image_type = CompressedImage if self._param('input_compressed') else Image
        if image_type is CompressedImage and not image_codec.JPEG_DAMAGE_DETECTED:
            self.get_logger().warning(
                'simplejpeg is not installed: JPEGs are decoded by OpenCV, which serves a '
                'damaged JPEG (cut, then closed with an end marker) with the lost part grey '
                'instead of refusing it; pip install simplejpeg (requirements.txt)')
        self._image_sub = self.create_subscription(
            image_type, 'image', self._on_image, make_qos(reliability, self._param('qos_depth')),
            event_callbacks=self._qos_warner.subscription('image', reliability))
        # camera_info is always best effort: it then matches every camera driver, and losing
        # one of these (rarely changing) messages costs nothing.
        self._camera_info = CameraInfoSource(self, 'camera_info', make_qos('best_effort', 5))
        adapter = self.stack.adapter
        if adapter is not None:
            adapter.set_enabled(self._adapt_enabled)
        self.active = True
        mode = self._param('depth_mode')
        self.get_logger().info(
            f'serving {self.weights_path} (version {self.stack.server.served.version}) on '
            f'{self.device} with backend {self.stack.server.backend}; image: '
            f'{self._image_sub.topic_name} ({image_type.__name__}, {reliability}); depth_mode '
            f'{mode}: depth on {self.outputs.topic_name(DEPTH_TOPICS[mode])}; '
            'adaptation ' + (
                f'on (state in {adapter.state_dir.directory}; {adapter.resumed})' if adapter
                else f'off ({self.stack.adaptation_refused})' if self.stack.adaptation_refused
                else 'off (adapt:=true to enable)'))

    def _deactivate(self):
        self.active = False
        for subscription in (self._image_sub, getattr(self._camera_info, 'subscription', None)):
            if subscription is not None:
                self.destroy_subscription(subscription)
        self._image_sub = self._camera_info = None
        self._slot.get(timeout=0)  # a frame taken in before: not published any more
        if self.stack.adapter is not None:
            self._adapt_enabled = self.stack.adapter.enabled
            self.stack.adapter.set_enabled(False)

    def _cleanup(self):
        """Back to unconfigured: threads stopped, model and publishers released (idempotent)."""
        if self.active:
            self._deactivate()
        if self._slot is not None:
            self._slot.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        if self.stack is not None:
            self.stack.close()
        if self.outputs is not None:
            self.outputs.destroy()
        self.stack = self.control = self.outputs = self._thread = None

    @property
    def server(self):
        return self.stack.server if self.stack is not None else None

    @property
    def adapter(self):
        return self.stack.adapter if self.stack is not None else None

    @property
    def pipeline(self):
        return self.stack.pipeline

    @property
    def weight_store(self):
        return self.stack.store

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
        if self.adapter is not None and 'adapt_duty_cycle' in incoming:
            self.adapter.config.duty_cycle = incoming['adapt_duty_cycle']  # read every step
        if self.adapter is not None and 'adapt_lr' in incoming and not self._declaring:
            self.get_logger().info(self.adapter.set_lr(incoming['adapt_lr']))
        return SetParametersResult(successful=True)

    # -- callbacks (executor threads): never any heavy work here --------------------------------
    def _on_image(self, msg):
        now = time.monotonic()
        self.stats.record_input(now)
        if self._slot.put((msg, now)):
            self.stats.record_stale()

    def _answer(self, service, response, call):
        """Fill `response` from `call()` -> (ok, message); any exception becomes a failed reply
        naming it (a handler is total: the node answers and goes on serving)."""
        try:
            if self.control is None:
                ok, message = False, ('the node is not configured (lifecycle state unconfigured): '
                                      f'ros2 lifecycle set {self.get_fully_qualified_name()} '
                                      'configure')
            else:
                ok, message = call()
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
        self._answer('~/reload_weights', response, lambda: self.control.reload(path))
        if response.success:
            self.weights_path = path
        return response

    def _on_adapt_enable(self, request, response):
        return self._answer('~/adaptation/enable', response,
                            lambda: self.control.enable(request.data))

    def _on_adapt_reset(self, request, response):
        return self._answer('~/adaptation/reset', response, self.control.reset)

    def _on_adapt_save(self, request, response):
        return self._answer('~/adaptation/save', response, self.control.save)

    # -- inference thread -----------------------------------------------------------------------
    def _inference_loop(self):
        self.stack.enter_serving_thread()
        slot = self._slot
        while True:
            item = slot.get(timeout=IDLE_POLL_S)
            if slot.closed:
                return
            self.pipeline.between_frames()
            if item is None:
                continue
            try:
                self._process(*item)
            except Exception as error:  # noqa: BLE001 - keep serving, but say what failed
                if slot.closed or not rclpy.ok(context=self.context):
                    return  # shutting down: publishers are gone
                self.stats.record_error(f'{type(error).__name__}: {error}')
                self._warn_throttled('error', f'frame failed: {type(error).__name__}: {error}')

    def _process(self, msg, received):
        started = time.monotonic()
        settings = {name: self._param(name) for name in LIVE_OUTPUT_PARAMETERS}
        bit_depth = settings['input_bit_depth'] or self._bit_depth
        changes = len(self._bit_depth.changes)
        camera_info = self._camera_info
        if camera_info is None:
            return  # deactivated while this frame waited
        try:
            rgb = conversions.image_msg_to_rgb(msg, settings['max_image_pixels'], bit_depth)
        except conversions.BadImageError as error:
            self.stats.record_bad_input(error.kind, str(error))
            self._warn_throttled(f'bad_input:{error.kind}',
                                 f'dropped a bad frame on {self._image_topic()}: {error}')
            return
        if len(self._bit_depth.changes) > changes:
            bits, largest = self._bit_depth.changes[-1]
            self.get_logger().info(
                f'{msg.encoding} input: largest sample so far {largest}, so {bits}-bit data '
                f'(mapped to 8 bit by 255/{(1 << bits) - 1}); set input_bit_depth to fix it')
        header = msg.header
        stamp_ns = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
        outputs = OutputSettings(**{name: settings[name] for name in OUTPUT_SETTINGS})
        info_topic = camera_info.subscription.topic_name
        result = self.pipeline.process(rgb, stamp_ns, camera_info.for_stamp(header.stamp),
                                       outputs, header.frame_id,
                                       no_camera=f'none received on {info_topic} yet')
        for key, text, period in frame_warnings(result, outputs, info_topic,
                                                self.pipeline.rays.note):
            self._warn_throttled(key, text, period)
        if result.depth is None:
            self.stats.record_no_scale()
            self._warn_throttled('no_scale', f'no depth published: {result.no_scale}')
            return
        if self.outputs.unused_metric_subscribers(result):
            self._warn_throttled('relative', (
                f"{self.outputs.topic_name('depth')} has subscribers, but depth_mode relative "
                f"publishes unitless depth on {self.outputs.topic_name(result.topic)} only "
                '(depth is metres, REP-118): set depth_mode scale or camera_height'), 30.0)
        self.outputs.publish(result, rgb, header, settings)
        done = time.monotonic()
        self.stats.record_output(result.version, result.model_s,
                                 started - received, done - started, done)

    # -- diagnostics, logging -------------------------------------------------------------------
    def _image_topic(self):
        return self._image_sub.topic_name if self._image_sub is not None else 'image'

    def _warn_throttled(self, key, text, period=WARN_PERIOD_S):
        """Warn at most once per `period` per kind of problem (not per call site)."""
        now = time.monotonic()
        if now - self._last_warned.get(key, -1e9) >= period:
            self._last_warned[key] = now
            self.get_logger().warning(text)

    def diagnostics_snapshot(self):
        """The `depth` status of /diagnostics, as a dict (also for in-process benchmarks)."""
        values = self.stats.snapshot()
        values['lifecycle_state'] = ('active' if self.active else 'inactive'
                                     if self.stack is not None else 'unconfigured')
        values['device'] = str(self.device)
        values['depth_mode'] = self._param('depth_mode')
        values['image_topic'] = self._image_topic()
        if self.stack is None:
            return values
        served = self.server.served
        last = values['model_version']  # what computed the last depth
        values.update(served.describe())
        values.update({
            'model_version': last,
            'serving_version': served.version,
            'depth_topic': self.outputs.topic_name(DEPTH_TOPICS[values['depth_mode']]),
            'depth_unit': self.pipeline.scaler.unit,
            'input_bit_depth': self._param('input_bit_depth') or self._bit_depth.bits,
            'depth_scale_in_use': self.pipeline.scaler.last_scale or 0.0,
            'camera_info_received': getattr(self._camera_info, 'received', False),
            'camera_info_pairing': getattr(self._camera_info, 'pairing', ''),
            'incompatible_qos_topics': ','.join(t for _, t in sorted(self._qos_warner.warned)),
            'last_swap_error': self.server.swap_error[1],
            'diagnostics': self.diagnostics.backend,
        })
        if self.adapter is not None:
            values.update(self.adapter.status())
        else:
            values['adaptation_enabled'] = False
            if self.stack.adaptation_refused:
                values['adaptation_refused'] = self.stack.adaptation_refused
        return values

    def _health(self, values):
        if values['lifecycle_state'] != 'active':
            loaded = ' (model loaded)' if self.stack is not None else ''
            return DiagnosticStatus.OK, (f"{values['lifecycle_state']}: not subscribed, not "
                                         f'publishing{loaded}')
        return serving_health(values, self._thread is not None and self._thread.is_alive())

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

    def stop(self):
        """Stop the inference, converter and adaptation threads (idempotent)."""
        self._cleanup()

    def destroy_node(self):
        self.stop()
        return super().destroy_node()


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

    def stop(self):
        self._cleanup()

    def destroy_node(self):
        self.stop()
        return super().destroy_node()


if __name__ == '__main__':  # `python -m structflow_ros.ros.depth_node` (the tests, the tools)
    from structflow_ros.ros.entry import run_depth_node
    sys.exit(run_depth_node())
