"""What a replay writes while it runs: the output bag (MCAP: the original topics plus the node's
outputs: depth in metres or depth/relative (depth_mode), depth/colored, depth/camera_info,
depth/points (metres only), so RViz or Foxglove can play it back) and the
side-by-side video. Both are closed properly on every way out (a Ctrl-C included)."""
from pathlib import Path

import cv2
import numpy as np

from structflow_ros.data import bag_io
from structflow_ros.online.camera import POINT_DTYPE, POINT_FIELD_OFFSETS, cloud_points
from structflow_ros.visual import even

POINTCLOUD_MSGTYPE = 'sensor_msgs/msg/PointCloud2'


class OutputBag:
    """MCAP bag with the original messages as recorded and the depth outputs per frame."""

    def __init__(self, path, output_namespace='/structflow'):
        self.path = Path(path)
        self.namespace = output_namespace.rstrip('/')
        self.writer = bag_io.BagWriter(self.path, storage='mcap').open()
        self.messages = 0

    def passthrough(self, record_ns, topic, msgtype, msg):
        self.writer.write_message(topic, msgtype, record_ns, msg)
        self.messages += 1

    def write_frame(self, frame, result, colored, frame_id, decimation):
        """One replayed frame as the node publishes it (online.pipeline.FrameResult: depth in
        the published unit, the camera of that depth and its rays) and its colour picture
        (bgr8, `colorize`), recorded at the image's header stamp."""
        stamp = frame.stamp_ns
        ns = self.namespace
        depth = result.depth
        self.writer.write_image(f'{ns}/{result.topic}', stamp, depth.astype(np.float32),
                                '32FC1', frame_id)
        self.writer.write_image(f'{ns}/depth/colored', stamp,
                                cv2.cvtColor(colored, cv2.COLOR_BGR2RGB), 'bgr8', frame_id)
        self.messages += 2
        camera = result.camera
        if camera is None or camera.info is None:
            return
        self.writer.write_message(f'{ns}/depth/camera_info', bag_io.CAMERA_INFO_MSGTYPE, stamp,
                                  bag_io.camera_info_message(camera.info, stamp, frame_id))
        self.messages += 1
        if camera.rays is not None:
            cloud, dense = cloud_points(depth, camera.rays, frame.rgb, decimation)
            self.writer.write_message(f'{ns}/depth/points', POINTCLOUD_MSGTYPE, stamp,
                                      self._cloud(cloud, dense, stamp, frame_id))
            self.messages += 1

    def _cloud(self, cloud, dense, stamp, frame_id):
        """The PointCloud2 message of `online.camera.cloud_points`, as the node makes it."""
        types = bag_io.typestore().types
        fields = [types['sensor_msgs/msg/PointField'](name=name, offset=offset, datatype=7,
                                                      count=1)
                  for name, offset in POINT_FIELD_OFFSETS]
        sec, nanosec = bag_io.split_stamp(stamp)
        header = types['std_msgs/msg/Header'](
            stamp=types['builtin_interfaces/msg/Time'](sec=sec, nanosec=nanosec),
            frame_id=frame_id)
        return types[POINTCLOUD_MSGTYPE](
            header=header, height=cloud.shape[0], width=cloud.shape[1], fields=fields,
            is_bigendian=False, point_step=POINT_DTYPE.itemsize,
            row_step=POINT_DTYPE.itemsize * cloud.shape[1],
            data=np.frombuffer(cloud.tobytes(), np.uint8), is_dense=dense)

    def close(self):
        self.writer.close()


class SideBySideVideo:
    """MP4 of image | depth | error; the first frame fixes the size (later sizes are fit)."""

    def __init__(self, path, fps):
        self.path = Path(path)
        self.fps = float(fps)
        self.writer = None
        self.size = None
        self.frames = 0

    def write(self, image):
        image = even(image)
        if self.writer is None:
            self.size = (image.shape[1], image.shape[0])
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*'mp4v'),
                                          self.fps, self.size)
            if not self.writer.isOpened():
                raise RuntimeError(f'OpenCV cannot write {self.path} with the mp4v codec')
        if (image.shape[1], image.shape[0]) != self.size:
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(image)
        self.frames += 1

    def close(self):
        if self.writer is not None:
            self.writer.release()
