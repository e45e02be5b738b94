"""ROS 2 node `depth_node`: monocular depth for one camera, RViz- and depth_image_proc-ready.

    ros2 run structflow depth_node --ros-args --params-file config/structflow.yaml \
        -r image:=/camera/image_raw -r camera_info:=/camera/camera_info

Subscribes `image` (sensor_msgs/Image, or CompressedImage with input_compressed:=true) and
`camera_info`; publishes `depth` (32FC1), `depth/colored` (bgr8), `depth/camera_info`,
`depth/points` (PointCloud2 xyz + rgb), each with the input image's header, and /diagnostics.

This module only translates messages. The per-frame path (swap, predict, camera, units, pairs)
is online/pipeline.py, built with the weights, the server and adaptation by online/stack.py;
the services' work is online/control.py. Threads: the executor (images and the diagnostics
timer in the default group; the services in a reentrant group, their slow work on its own
worker: online/service_calls.py), one inference thread (the image callback only drops the frame
into a single-slot, drop-oldest buffer), the server's converter thread and, with adapt:=true,
the adaptation thread.
"""
import sys
import threading
import time

import rclpy
import torch
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rcl_interfaces.msg import SetParametersResult
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from diagnostic_msgs.msg import DiagnosticArray
from std_srvs.srv import SetBool, Trigger

from structflow_ros.core.inference import resolve_device
from structflow_ros.data import image_codec
from structflow_ros.online.frame_slot import LatestFrameSlot
from structflow_ros.online.pipeline import OUTPUT_SETTINGS, OutputSettings, frame_warnings
from structflow_ros.online.control import ServingControl
from structflow_ros.online.server import resolve_weights_path
from structflow_ros.online.stack import StackError, stack_from_parameters
from structflow_ros.ros import conversions
from structflow_ros.ros.camera_info_source import CameraInfoSource
from structflow_ros.ros.diagnostics import ServingStats, make_diagnostic_array, serving_health
from structflow_ros.ros.params import PARAMETERS, validate
from structflow_ros.ros.qos import IncompatibleQosWarner, make_qos

INFERENCE_THREAD_NAME = 'structflow-inference'
# How often the idle inference thread looks for a new weight version (no frame needed to swap).
IDLE_POLL_S = 0.05
# Executor threads: images and the diagnostics timer (the default, mutually exclusive group),
# one per slow-call kind that may be running (weights, save), one to answer everything else at
# once (busy replies, enable, parameters) while those run.
EXECUTOR_THREADS = 4
SERVICE_QUEUE_DEPTH = 100
WARN_PERIOD_S = 5.0


class StartupError(RuntimeError):
    """The node cannot start (weights, device, parameters); the message says what to fix."""


class DepthNode(Node):
    """Depth from one camera; see the module docstring for topics and threads."""

    def __init__(self, node_name='depth_node', **kwargs):
        super().__init__(node_name, **kwargs)
        self.stats = ServingStats()
        self._slot = LatestFrameSlot()
        self._camera_info = None  # CameraInfoSource, made in _setup
        self.stack = None  # online.stack.Stack: store, server, pipeline, adapter
        self._last_warned = {}
        self._bit_depth = image_codec.BitDepthEstimator()  # input_bit_depth 0 (auto)
        self._thread = None
        self._declaring = False
        try:
            self._setup()
        except BaseException:
            self.destroy_node()
            raise

    def _setup(self):
        self.add_on_set_parameters_callback(self._on_set_parameters)
        # While declaring, a missing weights file is left to the load below, whose error names
        # the file and the reason in one line.
        self._declaring = True
        try:
            for spec in PARAMETERS:
                self.declare_parameter(spec.name, spec.default, spec.descriptor())
        except Exception as error:  # rclpy's Invalid*Parameter*Exception family
            raise StartupError(f'invalid parameter: {error}') from None
        self._declaring = False
        self._threads = self._param('threads')
        if self._threads > 0:
            torch.set_num_threads(self._threads)
        try:
            self.device = resolve_device(self._param('device'))
        except ValueError as error:
            raise StartupError(str(error)) from None
        try:
            self.stack, self.weights_path = stack_from_parameters(
                self._param, self.get_fully_qualified_name(), self.device, self._log)
        except StackError as error:
            raise StartupError(str(error)) from None
        if self.stack.adaptation_refused:
            # Depth is the product: serve it, but never adapt in another camera's directory.
            self.get_logger().error(f'adaptation not started: {self.stack.adaptation_refused}; '
                                    'serving without it')
        version = self.server.served.version  # a resumed adapted state serves from the start
        self.control = ServingControl(self.stack, lambda: self._thread.is_alive(), self._log)

        self._qos_warner = IncompatibleQosWarner(self.get_logger())
        in_reliability = self._param('qos_reliability')
        out_reliability = self._param('output_qos_reliability')
        out_qos = make_qos(out_reliability, 2)
        self._outputs = {}
        for topic, msg_type in (('depth', Image), ('depth/colored', Image),
                                ('depth/camera_info', CameraInfo),
                                ('depth/points', PointCloud2)):
            self._outputs[topic] = self.create_publisher(
                msg_type, topic, out_qos,
                event_callbacks=self._qos_warner.publisher(topic, out_reliability))
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        image_type = CompressedImage if self._param('input_compressed') else Image
        if image_type is CompressedImage and not image_codec.JPEG_DAMAGE_DETECTED:
            self.get_logger().warning(
                'simplejpeg is not installed: JPEGs are decoded by OpenCV, which serves a '
                'damaged JPEG (cut, then closed with an end marker) with the lost part grey '
                'instead of refusing it; pip install simplejpeg (requirements.txt)')
        self._image_sub = self.create_subscription(
            image_type, 'image', self._on_image,
            make_qos(in_reliability, self._param('qos_depth')),
            event_callbacks=self._qos_warner.subscription('image', in_reliability))
        # camera_info is always best effort: it then matches every camera driver, and losing
        # one of these (rarely changing) messages costs nothing.
        self._camera_info = CameraInfoSource(self, 'camera_info', make_qos('best_effort', 5))
        self._info_sub = self._camera_info.subscription
        # Services in their own reentrant group: a second request while a reload or a save runs
        # is taken by another executor thread and answered 'busy' at once (SlowCalls), so at
        # most one call per kind holds a thread and image callbacks always find one.
        self._service_group = ReentrantCallbackGroup()
        # A burst of requests (a script retrying in a loop) fits in the request queue: each is
        # taken and answered, the ones that find their kind running at once.
        service_qos = QoSProfile(depth=SERVICE_QUEUE_DEPTH,
                                 reliability=ReliabilityPolicy.RELIABLE)
        self._service_handles = [
            self.create_service(kind, name, handler, qos_profile=service_qos,
                                callback_group=self._service_group)
            for kind, name, handler in ((Trigger, '~/reload_weights', self._on_reload),
                                        (SetBool, '~/adaptation/enable', self._on_adapt_enable),
                                        (Trigger, '~/adaptation/reset', self._on_adapt_reset),
                                        (Trigger, '~/adaptation/save', self._on_adapt_save))]
        # On the steady clock: with use_sim_time and no /clock (a bag not playing yet), ROS
        # time stands at 0 and a ROS-time timer would never fire, hiding the node's health.
        self._diag_timer = self.create_timer(self._param('diagnostics_period'),
                                             self._publish_diagnostics,
                                             clock=Clock(clock_type=ClockType.STEADY_TIME))

        self._thread = threading.Thread(target=self._inference_loop, name=INFERENCE_THREAD_NAME,
                                        daemon=True)
        self._thread.start()
        if self.adapter is not None:
            self.adapter.start()
        self.get_logger().info(
            f'serving {self.weights_path} (version {version}) on {self.device} with backend '
            f'{self.server.backend}; '
            f'image: {self._image_sub.topic_name} ({image_type.__name__}, {in_reliability}), '
            f"depth: {self._outputs['depth'].topic_name}, depth_mode "
            f"{self._param('depth_mode')}; adaptation "
            + (f"on (state in {self.adapter.state_dir.directory}; {self.adapter.resumed})"
               if self.adapter is not None else
               f'off ({self._adaptation_refused})' if self._adaptation_refused
               else 'off (adapt:=true to enable)'))

    @property
    def server(self):
        return self.stack.server if self.stack is not None else None

    @property
    def adapter(self):
        return self.stack.adapter if self.stack is not None else None

    @property
    def weight_store(self):
        return self.stack.store

    @property
    def pipeline(self):
        return self.stack.pipeline

    @property
    def _adaptation_refused(self):
        return self.stack.adaptation_refused if self.stack is not None else ''

    # ------------------------------------------------------------------------------------------
    # Parameters
    # ------------------------------------------------------------------------------------------
    def _param(self, name):
        return self.get_parameter(name).value

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

    def _live_settings(self):
        """The live parameters, read once per frame (cheap dict lookups, no locks needed)."""
        # OUTPUT_SETTINGS (online.pipeline.OutputSettings) among them
        names = ('output_height', 'output_width', 'depth_mode', 'depth_scale', 'camera_height',
                 'colormap', 'colormap_range', 'colormap_min', 'colormap_max',
                 'colormap_percentile_low', 'colormap_percentile_high', 'publish_points',
                 'points_decimation', 'max_image_pixels', 'max_output_pixels',
                 'input_bit_depth')
        return {name: self._param(name) for name in names}

    # ------------------------------------------------------------------------------------------
    # Callbacks (executor thread): never any heavy work here
    # ------------------------------------------------------------------------------------------
    def _on_image(self, msg):
        now = time.monotonic()
        self.stats.record_input(now)
        if self._slot.put((msg, now)):
            self.stats.record_stale()

    def _answer(self, service, response, call):
        """Fill `response` from `call()` -> (ok, message); any exception becomes a failed reply
        naming it (a handler is total: the node answers and goes on serving)."""
        try:
            ok, message = call()
        except Exception as error:  # noqa: BLE001 - total: every failure becomes a reply
            ok, message = False, (f'failed: {type(error).__name__}: {error}; the node goes on '
                                  f'serving version {self._served_version()}')
        response.success, response.message = bool(ok), str(message)
        if message.startswith('busy:'):  # a burst of calls must not flood the log
            self._warn_throttled(f'busy:{service}', f'{service}: {message}')
        elif not ok:
            self.get_logger().error(f'{service}: {message}')
        return response

    def _served_version(self):
        return self.server.served.version if self.server is not None else 0

    def _on_reload(self, request, response):
        del request
        path = resolve_weights_path(self._param('weights'))  # re-read: it may have been set
        self._answer('~/reload_weights', response, lambda: self.control.reload(path))
        if response.success:
            self.weights_path = path
        return response

    def _on_adapt_enable(self, request, response):
        return self._answer('~/adaptation/enable', response,
                            lambda: self.control.enable(request.data))

    def _on_adapt_reset(self, request, response):
        del request
        return self._answer('~/adaptation/reset', response, self.control.reset)

    def _on_adapt_save(self, request, response):
        del request
        return self._answer('~/adaptation/save', response, self.control.save)

    # ------------------------------------------------------------------------------------------
    # Inference thread
    # ------------------------------------------------------------------------------------------
    def _inference_loop(self):
        self.stack.enter_serving_thread()
        while True:
            item = self._slot.get(timeout=IDLE_POLL_S)
            if self._slot.closed:
                return
            self.pipeline.between_frames()
            if item is None:
                continue
            try:
                self._process(*item)
            except Exception as error:  # noqa: BLE001 - keep serving, but say what failed
                if self._slot.closed or not rclpy.ok(context=self.context):
                    return  # shutting down: publishers are gone
                self.stats.record_error(f'{type(error).__name__}: {error}')
                self._warn_throttled('error', f'frame failed: {type(error).__name__}: {error}')

    def _process(self, msg, received):
        started = time.monotonic()
        settings = self._live_settings()
        bit_depth = settings['input_bit_depth'] or self._bit_depth
        changes = len(self._bit_depth.changes)
        try:
            rgb = conversions.image_msg_to_rgb(msg, settings['max_image_pixels'], bit_depth)
        except conversions.BadImageError as error:
            self.stats.record_bad_input(error.kind, str(error))
            self._warn_throttled(f'bad_input:{error.kind}',
                                 f'dropped a bad frame on {self._image_sub.topic_name}: {error}')
            return
        if len(self._bit_depth.changes) > changes:
            bits, largest = self._bit_depth.changes[-1]
            self.get_logger().info(
                f'{msg.encoding} input: largest sample so far {largest}, so {bits}-bit data '
                f'(mapped to 8 bit by 255/{(1 << bits) - 1}); set input_bit_depth to fix it')
        header = msg.header
        info = self._camera_info.for_stamp(header.stamp)
        stamp_ns = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
        outputs = OutputSettings(**{name: settings[name] for name in OUTPUT_SETTINGS})
        result = self.pipeline.process(
            rgb, stamp_ns, info, outputs, header.frame_id,
            no_camera=f'none received on {self._info_sub.topic_name} yet')
        for key, text, period in frame_warnings(result, outputs, self._info_sub.topic_name,
                                                self.pipeline.rays.note):
            self._warn_throttled(key, text, period)
        if result.depth is None:
            self.stats.record_no_scale()
            self._warn_throttled('no_scale', f'no depth published: {result.no_scale}')
            return
        depth = result.depth
        camera = result.camera
        self._outputs['depth'].publish(conversions.depth_to_image_msg(depth, header))
        if camera is not None and camera.info is not None:
            self._outputs['depth/camera_info'].publish(
                conversions.camera_info_msg(camera.info, header))
        colored_pub = self._outputs['depth/colored']
        if colored_pub.get_subscription_count() > 0:
            limits = conversions.colormap_limits(
                depth, settings['colormap_range'],
                (settings['colormap_min'], settings['colormap_max']),
                (settings['colormap_percentile_low'], settings['colormap_percentile_high']))
            bgr = conversions.colorize_depth(depth, limits, settings['colormap'])
            colored_pub.publish(conversions.bgr_to_image_msg(bgr, header))
        points_pub = self._outputs['depth/points']
        if (settings['publish_points'] and camera is not None and camera.rays is not None
                and points_pub.get_subscription_count() > 0):
            points_pub.publish(conversions.depth_to_pointcloud(
                depth, camera.rays, rgb, settings['points_decimation'], header))
        done = time.monotonic()
        self.stats.record_output(result.version, result.model_s,
                                 started - received, done - started, done)

    # ------------------------------------------------------------------------------------------
    # Diagnostics, logging, shutdown
    # ------------------------------------------------------------------------------------------
    def _warn_throttled(self, key, text, period=WARN_PERIOD_S):
        """Warn at most once per `period` per kind of problem (not per call site)."""
        now = time.monotonic()
        if now - self._last_warned.get(key, -1e9) >= period:
            self._last_warned[key] = now
            self.get_logger().warning(text)

    def diagnostics_snapshot(self):
        """Everything /diagnostics reports, as a dict (also for in-process benchmarks)."""
        snapshot = self.stats.snapshot()
        served = self.server.served
        extra = served.describe()
        extra['model_version'] = snapshot.pop('model_version')  # what computed the last depth
        extra['serving_version'] = served.version
        extra.update({
            'device': str(self.device),
            'depth_mode': self._param('depth_mode'),
            'depth_unit': self.pipeline.scaler.unit,
            'input_bit_depth': self._param('input_bit_depth') or self._bit_depth.bits,
            'depth_scale_in_use': self.pipeline.scaler.last_scale or 0.0,
            'camera_info_received': self._camera_info.received,
            'camera_info_pairing': self._camera_info.pairing,
            'image_topic': self._image_sub.topic_name,
            'incompatible_qos_topics': ','.join(t for _, t in sorted(self._qos_warner.warned)),
            'last_swap_error': self.server.swap_error[1],
        })
        if self.adapter is not None:
            extra.update(self.adapter.status())
        else:
            extra['adaptation_enabled'] = False
            if self._adaptation_refused:
                extra['adaptation_refused'] = self._adaptation_refused
        return {**snapshot, **extra}

    def _publish_diagnostics(self):
        values = self.diagnostics_snapshot()
        level, message = serving_health(values, self._thread.is_alive())
        array = make_diagnostic_array(self.get_clock().now().to_msg(),
                                      f'{self.get_fully_qualified_name()}: depth',
                                      values['device'], values, {}, level, message)
        self._diagnostics_pub.publish(array)

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

    def stop(self):
        """Stop the inference and converter threads (idempotent); the node stays valid until
        destroy_node."""
        self._slot.close()
        if self.adapter is not None:
            self.adapter.stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        if self.stack is not None:
            self.stack.close()

    def destroy_node(self):
        self.stop()
        return super().destroy_node()


if __name__ == '__main__':  # `python -m structflow_ros.ros.depth_node` (the tests, the tools)
    from structflow_ros.ros.entry import run_depth_node
    sys.exit(run_depth_node())
