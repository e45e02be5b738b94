"""The depth node's output topics: one FrameResult (online/pipeline.py) in, messages out.

`depth` carries metres only (REP-118: 32FC1 in metres; depth_mode scale or camera_height);
relative depth goes to `depth/relative` (32FC1, unitless, every frame's median 1.0), so no
consumer of `depth` (depth_image_proc, RViz DepthCloud, a costmap) can read unitless values as
metres. Points are built from metric depth only, for the same reason. Invalid pixels are NaN
or +Inf as REP-117 says (online/units.mark_invalid).
"""
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from structflow_ros.online.units import DEPTH_TOPICS
from structflow_ros.ros import conversions

TOPICS = (('depth', Image), ('depth/relative', Image), ('depth/colored', Image),
          ('depth/camera_info', CameraInfo), ('depth/points', PointCloud2))
assert set(DEPTH_TOPICS.values()) <= {topic for topic, _ in TOPICS}


class DepthOutputs:
    """Publishers of one camera's outputs; `create(msg_type, topic)` makes each one (a plain or
    a lifecycle publisher), `destroy(publisher)` removes it."""

    def __init__(self, create, destroy):
        self._destroy = destroy
        self.publishers = {topic: create(msg_type, topic) for topic, msg_type in TOPICS}

    def topic_name(self, topic):
        return self.publishers[topic].topic_name

    def unused_metric_subscribers(self, result):
        """Subscribers of `depth` while this frame's depth went to `depth/relative` (they get
        nothing: say so, they may expect metres)."""
        if result.topic == 'depth':
            return 0
        return self.publishers['depth'].get_subscription_count()

    def publish(self, result, rgb, header, settings):
        """Publish one frame: depth on its topic, its camera_info, colormap and points (the
        last two only when someone listens: they cost more than the rest together)."""
        depth, camera = result.depth, result.camera
        self.publishers[result.topic].publish(conversions.depth_to_image_msg(depth, header))
        if camera is not None and camera.info is not None:
            self.publishers['depth/camera_info'].publish(
                conversions.camera_info_msg(camera.info, header))
        colored = self.publishers['depth/colored']
        if colored.get_subscription_count() > 0:
            limits = conversions.colormap_limits(
                depth, settings['colormap_range'],
                (settings['colormap_min'], settings['colormap_max']),
                (settings['colormap_percentile_low'], settings['colormap_percentile_high']))
            bgr = conversions.colorize_depth(depth, limits, settings['colormap'])
            colored.publish(conversions.bgr_to_image_msg(bgr, header))
        points = self.publishers['depth/points']
        if (settings['publish_points'] and result.topic == 'depth' and camera is not None
                and camera.rays is not None and points.get_subscription_count() > 0):
            points.publish(conversions.depth_to_pointcloud(
                depth, camera.rays, rgb, settings['points_decimation'], header))

    def destroy(self):
        for publisher in self.publishers.values():
            self._destroy(publisher)
        self.publishers = {}
