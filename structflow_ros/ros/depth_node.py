"""ROS 2 node `depth_node`: monocular depth for one camera, RViz- and depth_image_proc-ready.

    ros2 run structflow depth_node --ros-args --params-file config/structflow.yaml \
        -r image:=/camera/image_raw -r camera_info:=/camera/camera_info

Subscribes `image` (sensor_msgs/Image, or CompressedImage with input_compressed:=true) and
`camera_info`; publishes `depth` (32FC1), `depth/colored` (bgr8), `depth/camera_info`,
`depth/points` (PointCloud2 xyz + rgb), each with the input image's header, and /diagnostics.

Threads: the executor (a MultiThreadedExecutor: the image callbacks and the diagnostics timer in
the default callback group, the services in their own reentrant group so a reload or a save never
delays a frame; the slow calls run on their own worker, one per kind, a second request answered
'busy' at once: structflow_ros/online/service_calls.py), one inference thread, the depth
server's converter thread and, with `adapt:=true`, the adaptation thread
(structflow_ros/online/adapter.py). The image callback only drops the frame into a single-slot,
drop-oldest buffer; the inference thread decodes, runs the model and
publishes. New weights (from ~/reload_weights now, from on-robot adaptation later) are published
as a new version into a VersionedWeightStore; the converter thread builds them for the serving
backend aside and the inference thread swaps the reference between two frames
(structflow_ros/online/server.py); the served module is never mutated.
"""
import signal
import sys
import threading
import time

import rclpy
import torch
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rcl_interfaces.msg import SetParametersResult
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from std_srvs.srv import SetBool, Trigger

from structflow_ros.core.backends import serving_torch_threads
from structflow_ros.core.checkpoint import CheckpointError
from structflow_ros.core.inference import resolve_device
from structflow_ros.data import image_codec
from structflow_ros.online.adapter import (NODE_PARAMETERS, OnlineAdapter,
                                           adapter_config_from_node_parameters)
from structflow_ros.online.pair_buffer import PairBuffer, PairBufferConfig
from structflow_ros.online.pipeline import FramePipeline
from structflow_ros.online.service_calls import SlowCalls
from structflow_ros.online.state_dir import CameraIdentity, StateDirBusy, resolve_state_dir
from structflow_ros.online.server import (DepthServer, NotServableError,
                                          read_serving_checkpoint, resolve_weights_path)
from structflow_ros.online.weight_store import VersionedWeightStore
from structflow_ros.ros import conversions
from structflow_ros.ros.camera_info_source import CameraInfoSource
from structflow_ros.ros.dds_profile import use_node_profile
from structflow_ros.ros.diagnostics import ServingStats, make_diagnostic_array
from structflow_ros.ros.frame_slot import LatestFrameSlot
from structflow_ros.ros.params import PARAMETERS, validate
from structflow_ros.ros.qos import IncompatibleQosWarner, make_qos
from structflow_ros.ros.scaling import DepthScaler, ScaleUnavailable

INFERENCE_THREAD_NAME = 'structflow-inference'
# How often the idle inference thread looks for a new weight version (no frame needed to swap).
IDLE_POLL_S = 0.05
# How long ~/reload_weights waits for the inference thread to serve the new version.
SWAP_TIMEOUT_S = 10.0
# How long a service handler waits for its slow call (reload, reset, save) before it answers
# 'still running' and frees its executor thread; the call's result is then logged.
SERVICE_WAIT_S = 30.0
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
        self.weight_store = VersionedWeightStore()
        self._slot = LatestFrameSlot()
        self._camera_info = None  # CameraInfoSource, made in _setup
        self.server = None
        self.adapter = None
        self._adapter_camera = None
        self.pipeline = None
        self._last_warned = {}
        self._rays_missing = ''  # why this frame has no rays (camera_height needs them)
        self._scaler = DepthScaler()
        self._rays = conversions.RayCache()
        self._bit_depth = image_codec.BitDepthEstimator()  # input_bit_depth 0 (auto)
        self._thread = None
        self._declaring = False
        self._slow_calls = SlowCalls(log=self._log)
        self._adaptation_refused = ''  # why adapt:=true did not start adaptation
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
        self.weights_path = resolve_weights_path(self._param('weights'))
        try:
            state_dict, meta = read_serving_checkpoint(self.weights_path)
        except CheckpointError as error:
            hint = ('' if self._param('weights') else
                    " (the 'weights' parameter is empty, so the shipped default model was "
                    'used; set weights:=<checkpoint file>)')
            raise StartupError(f'cannot load weights {self.weights_path}: {error}{hint}') from None
        version = self.weight_store.publish(state_dict, meta)
        pair_buffer = None
        if self._param('adapt'):
            pair_buffer = self._make_adapter(state_dict, meta)
            version = self.weight_store.version  # a resumed adapted state serves from the start
        del state_dict
        self.server = DepthServer(self.weight_store, self.device, self._input_size(),
                                  self._param('backend'), self._threads, self._log,
                                  aspect=self._param('network_aspect'))
        try:
            self.server.start()
        except NotServableError as error:
            raise StartupError(f'weights {self.weights_path} cannot serve: {error}') from None
        except RuntimeError as error:  # CUDA out of memory, a broken driver, ...
            raise StartupError(f'cannot put the model from {self.weights_path} on '
                               f'{self.device}: {error}') from None
        self.pipeline = FramePipeline(self.server, pair_buffer)

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
        self._reload_srv = self.create_service(Trigger, '~/reload_weights', self._on_reload,
                                               qos_profile=service_qos,
                                               callback_group=self._service_group)
        self._adapt_srvs = [
            self.create_service(SetBool, '~/adaptation/enable', self._on_adapt_enable,
                                qos_profile=service_qos, callback_group=self._service_group),
            self.create_service(Trigger, '~/adaptation/reset', self._on_adapt_reset,
                                qos_profile=service_qos, callback_group=self._service_group),
            self.create_service(Trigger, '~/adaptation/save', self._on_adapt_save,
                                qos_profile=service_qos, callback_group=self._service_group)]
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

    def _make_adapter(self, state_dict, meta):
        """The adaptation thread's objects (not started yet); returns the pair buffer."""
        config = meta['model_config']
        if not config.flow_branch:
            raise StartupError(f'adapt:=true needs weights with the flow branch; '
                               f'{self.weights_path} has none (depth path only)')
        adapter_config = adapter_config_from_node_parameters(
            {name: self._param(name) for name in (*NODE_PARAMETERS, 'adapt_gate')})
        pair_buffer = PairBuffer(PairBufferConfig(height=config.height, width=config.width))
        state_dir = resolve_state_dir(self._param('adapt_state_dir'),
                                      self.get_fully_qualified_name())
        try:
            self.adapter = OnlineAdapter(
                state_dict, config, self.weight_store, pair_buffer, adapter_config,
                self.device, state_dir, self._param('adapt_resume'), log=self._log)
        except StateDirBusy as error:
            # Depth is the product: serve it, but never adapt in another camera's directory.
            self._adaptation_refused = str(error)
            self.get_logger().error(f'adaptation not started: {error}; serving without it')
            return None
        except (ValueError, OSError) as error:
            raise StartupError(f'cannot start adaptation: {error}') from None
        return pair_buffer

    # ------------------------------------------------------------------------------------------
    # Parameters
    # ------------------------------------------------------------------------------------------
    def _param(self, name):
        return self.get_parameter(name).value

    def _input_size(self):
        return self._param('input_height'), self._param('input_width')

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
        return self._answer('~/reload_weights', response, lambda: self._slow_calls.run(
            'weights', 'a reload', self._reload, SERVICE_WAIT_S))

    def _reload(self):
        path = resolve_weights_path(self._param('weights'))  # re-read: it may have been set
        serving = self._served_version()
        try:
            state_dict, meta = read_serving_checkpoint(path)
            if self.adapter is not None:
                # Adaptation continues from the new weights (and resets its anchor to them).
                version = self.adapter.rebase(state_dict, meta)
            else:
                version = self.weight_store.publish(state_dict, meta)
        except (CheckpointError, ValueError, RuntimeError) as error:
            return False, f'reload refused, still serving version {serving}: {error}'
        del state_dict
        served, reason = self.server.wait_until_serving(version, SWAP_TIMEOUT_S,
                                                        alive=self._thread.is_alive)
        if not served:
            return False, (f'version {version} ({path}) published but not served: {reason}; '
                           f'still serving version {self._served_version()}')
        self.weights_path = path
        message = f'serving {path} as version {version}'
        self.get_logger().info(message)
        return True, message

    def _adaptation_off(self):
        return False, 'adaptation is off' + (
            f': {self._adaptation_refused}' if self._adaptation_refused
            else ' (start the node with adapt:=true)')

    def _on_adapt_enable(self, request, response):
        def enable():
            if self.adapter is None:
                return self._adaptation_off()
            message = self.adapter.set_enabled(request.data)
            self.get_logger().info(message)
            return True, message
        return self._answer('~/adaptation/enable', response, enable)

    def _on_adapt_reset(self, request, response):
        del request
        if self.adapter is None:
            return self._answer('~/adaptation/reset', response, self._adaptation_off)
        return self._answer('~/adaptation/reset', response, lambda: self._slow_calls.run(
            'weights', 'an adaptation reset', self._reset, SERVICE_WAIT_S))

    def _reset(self):
        removed, message = self.adapter.reset()
        served, reason = self.server.wait_until_serving(self.adapter.served_version,
                                                        SWAP_TIMEOUT_S,
                                                        alive=self._thread.is_alive)
        if not served:
            message += f'; not served yet: {reason}'
        return served and removed, message

    def _on_adapt_save(self, request, response):
        del request
        if self.adapter is None:
            return self._answer('~/adaptation/save', response, self._adaptation_off)
        return self._answer('~/adaptation/save', response, lambda: self._slow_calls.run(
            'save', 'a save', self.adapter.save, SERVICE_WAIT_S))

    # ------------------------------------------------------------------------------------------
    # Inference thread
    # ------------------------------------------------------------------------------------------
    def _inference_loop(self):
        # Per calling thread (OpenMP): a runtime with its own pool gets torch on one thread.
        threads = serving_torch_threads(self.server.served.predictor.runner,
                                        self._threads or torch.get_num_threads())
        torch.set_num_threads(threads)
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
        height, width = rgb.shape[:2]
        if self.adapter is not None:
            self.adapter.observe_camera(self._camera_identity(msg.header, width, height))
        out_height, out_width = self._output_size(height, width, settings)
        stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        result = self.pipeline.process(rgb, stamp_ns, (out_height, out_width))
        model_depth = result.depth

        depth_info, rays = self._depth_camera(msg.header, width, height, out_width, out_height,
                                              settings)
        self._scaler.configure(settings['depth_mode'], settings['depth_scale'],
                               settings['camera_height'])
        try:
            depth = self._scaler.apply(model_depth, rays, self._rays_missing)
        except ScaleUnavailable as error:
            self.stats.record_no_scale()
            self._warn_throttled('no_scale', f'no depth published: {error}')
            return

        header = msg.header
        self._outputs['depth'].publish(conversions.depth_to_image_msg(depth, header))
        if depth_info is not None:
            self._outputs['depth/camera_info'].publish(depth_info)
        colored_pub = self._outputs['depth/colored']
        if colored_pub.get_subscription_count() > 0:
            limits = conversions.colormap_limits(
                depth, settings['colormap_range'],
                (settings['colormap_min'], settings['colormap_max']),
                (settings['colormap_percentile_low'], settings['colormap_percentile_high']))
            bgr = conversions.colorize_depth(depth, limits, settings['colormap'])
            colored_pub.publish(conversions.bgr_to_image_msg(bgr, header))
        points_pub = self._outputs['depth/points']
        if (settings['publish_points'] and rays is not None
                and points_pub.get_subscription_count() > 0):
            points_pub.publish(conversions.depth_to_pointcloud(
                depth, rays, rgb, settings['points_decimation'], header))
        done = time.monotonic()
        self.stats.record_output(result.version, result.model_s,
                                 started - received, done - started, done)

    def _output_size(self, height, width, settings):
        """The published size: the parameters (0 = the input's), scaled down, aspect kept, to
        max_output_pixels when a dimension that follows the input makes it larger."""
        out_height = settings['output_height'] or height
        out_width = settings['output_width'] or width
        limit = settings['max_output_pixels']
        if out_height * out_width > limit:
            shrink = (limit / (out_height * out_width)) ** 0.5
            wanted = f'{out_width}x{out_height}'
            out_height = max(1, int(out_height * shrink))
            out_width = max(1, int(out_width * shrink))
            self._warn_throttled('output_size', (
                f'output {wanted} for a {width}x{height} image is more than max_output_pixels '
                f'{limit}: publishing {out_width}x{out_height}'), period=30.0)
        return out_height, out_width

    def _camera_identity(self, header, width, height):
        """frame_id, size and (once camera_info came) K: whose adaptation state fits."""
        info = self._camera_info.for_stamp(header.stamp)
        usable = info is not None and (info.width, info.height) in ((width, height), (0, 0))
        K = tuple(float(v) for v in info.k) if usable and any(info.k) else None
        return CameraIdentity(header.frame_id, width, height, K)

    def _depth_camera(self, header, width, height, out_width, out_height, settings):
        """Rescaled camera_info and rays for this frame, or (None, None) without camera_info."""
        info = self._camera_info.for_stamp(header.stamp)
        self._rays_missing = ''
        if info is None:
            self._rays_missing = f'none received on {self._info_sub.topic_name} yet'
            if settings['publish_points'] or settings['depth_mode'] == 'camera_height':
                self._warn_throttled('no_camera_info', (
                    f'no camera_info received on {self._info_sub.topic_name} yet: no '
                    'depth/camera_info and no depth/points'
                    + (', and no depth in camera_height mode'
                       if settings['depth_mode'] == 'camera_height' else '')), period=30.0)
            return None, None
        need_rays = settings['publish_points'] or settings['depth_mode'] == 'camera_height'
        camera = conversions.depth_camera(info, width, height, out_width, out_height, header,
                                          self._rays, need_rays)
        self._rays_missing = camera.rays_missing
        if camera.problem:
            # A bad camera_info costs only what needs it: depth keeps coming in relative and
            # scale modes; depth/camera_info and depth/points wait for a good one.
            self._warn_throttled('bad_camera_info', (
                f'ignoring the camera_info on {self._info_sub.topic_name}: {camera.problem}; '
                'no depth/camera_info and no depth/points until a valid one arrives'
                + (', and no depth in camera_height mode'
                   if settings['depth_mode'] == 'camera_height' else '')))
            return None, None
        if self.adapter is not None:
            calibration = (tuple(info.k), int(info.height), int(info.width))
            if calibration != self._adapter_camera:  # the calibrated adaptation loss may use it
                self._adapter_camera = calibration
                self.adapter.set_camera(info.k, (info.height or height, info.width or width))
        if camera.mismatch:
            # Per kind, throttled: a size that changes every frame makes a new text every
            # frame (a set of warned texts would grow without bound and log every frame).
            self._warn_throttled('info_mismatch', camera.mismatch, period=30.0)
        if self._rays.note and need_rays:
            self._warn_throttled('rays', self._rays.note, period=30.0)
        return camera.info, camera.rays

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
            'depth_unit': self._scaler.unit,
            'input_bit_depth': self._param('input_bit_depth') or self._bit_depth.bits,
            'depth_scale_in_use': self._scaler.last_scale if self._scaler.last_scale else 0.0,
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
        level, message = DiagnosticStatus.OK, 'serving'
        if values['frames_in'] == 0:
            level, message = DiagnosticStatus.WARN, (
                f"no image received on {values['image_topic']} (check the topic remap and "
                'QoS)')
        elif not self._thread.is_alive():
            level, message = DiagnosticStatus.ERROR, 'inference thread stopped'
        elif values['output_rate_hz'] == 0 and values['input_rate_hz'] > 0:
            level, message = DiagnosticStatus.WARN, 'images arrive but no depth is published'
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
        if self.server is not None:
            self.server.close()

    def destroy_node(self):
        self.stop()
        return super().destroy_node()


def _ignore_further_interrupts():
    """Ignore SIGINT from now on, even when a pending interrupt lands in this very call.

    A KeyboardInterrupt can be raised inside `signal.signal` itself (CI caught one there: exit
    -2 on Ctrl-C of a launch). Once the call has returned, interrupts still pending are dropped,
    since Python skips tripped signals whose handler is SIG_IGN.
    """
    while True:
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            return
        except KeyboardInterrupt:
            continue


def main(args=None):
    """Entry point of `ros2 run structflow depth_node`; returns the process exit code."""
    dds_note = use_node_profile()  # before rclpy.init: the DDS context reads it once
    rclpy.init(args=args)
    logger = get_logger('depth_node')
    try:
        node = DepthNode()
        node.get_logger().info(dds_note)
    except StartupError as error:
        logger.fatal(str(error))
        rclpy.try_shutdown()
        return 1
    except KeyboardInterrupt:
        rclpy.try_shutdown()
        return 0
    executor = MultiThreadedExecutor(num_threads=EXECUTOR_THREADS)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # The first SIGINT stopped the executor (rclpy's handler) and is also re-raised as a
        # KeyboardInterrupt at a random later point: ignore further SIGINTs while the threads
        # stop, or that interrupt lands in a join and the node dies with a traceback.
        # (`ros2 launch` escalates to SIGTERM if a node does not stop.)
        _ignore_further_interrupts()
        executor.remove_node(node)
        node.destroy_node()
        executor.shutdown()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
