"""One camera of the depth node: its topics, its frames' decoding and its outputs.

A node serves one camera (topics in its own namespace) or several (`cameras: [front, rear]`:
`front/image`, `front/depth`, ... under the node's namespace). Each camera has its own
subscriptions, counters, publishers and per-frame state (units, rays, pairs, adaptation: its
FramePipeline); cameras share the node's model (one DepthServer) unless each adapts its own.
"""
import time

from sensor_msgs.msg import CompressedImage, Image

from structflow_ros.data import image_codec
from structflow_ros.online.pipeline import (OUTPUT_SETTINGS, FrameJob, OutputSettings,
                                            frame_warnings)
from structflow_ros.ros import conversions
from structflow_ros.ros.camera_info_source import CameraInfoSource
from structflow_ros.ros.diagnostics import ServingStats
from structflow_ros.ros.qos import make_qos


class CameraChannel:
    """One camera: `name` '' (the node's own topics) or a sub-namespace such as 'front'."""

    def __init__(self, name):
        self.name = name
        self.prefix = f'{name}/' if name else ''
        self.label = f'{name} ' if name else ''  # in /diagnostics status names
        self.stats = ServingStats()
        self.bit_depth = image_codec.BitDepthEstimator()  # input_bit_depth 0 (auto)
        self.stack = self.pipeline = self.outputs = None
        self.image_sub = self.camera_info = None
        self.info_topic = f'{self.prefix}camera_info'  # resolved when subscribed

    def subscribe(self, node, callback, reliability, depth, compressed, qos_warner):
        topic = f'{self.prefix}image'
        self.image_sub = node.create_subscription(
            CompressedImage if compressed else Image, topic, callback,
            make_qos(reliability, depth),
            event_callbacks=qos_warner.subscription(topic, reliability))
        # camera_info is always best effort: it then matches every camera driver, and losing
        # one of these (rarely changing) messages costs nothing.
        self.camera_info = CameraInfoSource(node, f'{self.prefix}camera_info',
                                            make_qos('best_effort', 5))
        self.info_topic = self.camera_info.subscription.topic_name

    def unsubscribe(self, node):
        for subscription in (self.image_sub, getattr(self.camera_info, 'subscription', None)):
            if subscription is not None:
                node.destroy_subscription(subscription)
        self.image_sub = self.camera_info = None

    @property
    def image_topic(self):
        return self.image_sub.topic_name if self.image_sub is not None else f'{self.prefix}image'

    def decode(self, msg, settings, log, warn):
        """The frame's RGB and its job for online.pipeline.process_frames, or None (a bad frame,
        counted and warned; or no camera_info source: deactivated meanwhile)."""
        camera_info = self.camera_info
        if camera_info is None:
            return None
        changes = len(self.bit_depth.changes)
        try:
            rgb = conversions.image_msg_to_rgb(msg, settings['max_image_pixels'],
                                               settings['input_bit_depth'] or self.bit_depth)
        except conversions.BadImageError as error:
            self.stats.record_bad_input(error.kind, str(error))
            warn(f'bad_input:{error.kind}',
                 f'dropped a bad frame on {self.image_topic}: {error}')
            return None
        if len(self.bit_depth.changes) > changes:
            bits, largest = self.bit_depth.changes[-1]
            log('info', f'{msg.encoding} input on {self.image_topic}: largest sample so far '
                        f'{largest}, so {bits}-bit data (mapped to 8 bit by '
                        f'255/{(1 << bits) - 1}); set input_bit_depth to fix it')
        header = msg.header
        return FrameJob(self.pipeline, rgb, header.stamp.sec * 1_000_000_000
                        + header.stamp.nanosec, camera_info.for_stamp(header.stamp),
                        OutputSettings(**{name: settings[name] for name in OUTPUT_SETTINGS}),
                        header.frame_id, no_camera=f'none received on {self.info_topic} yet')

    def publish(self, result, job, header, settings, received, started, warn):
        """A computed frame's outputs, or why there are none; its counters."""
        for key, text, period in frame_warnings(result, job.settings, self.info_topic,
                                                self.pipeline.rays.note):
            warn(f'{key}:{self.name}', text, period)
        if result.depth is None:
            self.stats.record_no_scale()
            warn(f'no_scale:{self.name}', f'no depth published for {self.image_topic}: '
                                          f'{result.no_scale}')
            return
        if self.outputs.unused_metric_subscribers(result):
            warn(f'relative:{self.name}', (
                f"{self.outputs.topic_name('depth')} has subscribers, but depth_mode relative "
                f'publishes unitless depth on {self.outputs.topic_name(result.topic)} only '
                '(depth is metres, REP-118): set depth_mode scale or camera_height'), 30.0)
        self.outputs.publish(result, job.rgb, header, settings)
        done = time.monotonic()
        self.stats.record_output(result.version, result.model_s, started - received,
                                 done - started, done)
