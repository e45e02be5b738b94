"""What a replay writes while it runs: the output bag (MCAP: the original topics plus depth,
depth/colored, depth/camera_info, depth/points, so RViz or Foxglove can play it back) and the
side-by-side video. Both are closed properly on every way out (a Ctrl-C included)."""
from pathlib import Path

import cv2
import numpy as np

from structflow_ros.data import bag_io
from structflow_ros.data.camera import resize_intrinsics
from structflow_ros.visual import even

POINTCLOUD_MSGTYPE = 'sensor_msgs/msg/PointCloud2'
POINTS_DECIMATION = 4  # every 4th pixel of every 4th row: a readable cloud, a small bag
POINT_FIELDS = (('x', 0), ('y', 4), ('z', 8), ('rgb', 12))


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

    def write_frame(self, frame, depth, colored, frame_id):
        """depth (metres or relative units, at the image size or not) and its colour picture
        (bgr8, `colorize`) for one replayed frame, recorded at the image's header stamp."""
        stamp = frame.stamp_ns
        ns = self.namespace
        self.writer.write_image(f'{ns}/depth', stamp, depth.astype(np.float32), '32FC1',
                                frame_id)
        self.writer.write_image(f'{ns}/depth/colored', stamp,
                                cv2.cvtColor(colored, cv2.COLOR_BGR2RGB), 'bgr8', frame_id)
        self.messages += 2
        if frame.K is not None:
            height, width = depth.shape
            K = resize_intrinsics(frame.K, frame.rgb.shape[:2], depth.shape)
            self.writer.write_camera_info(f'{ns}/depth/camera_info', stamp, K, width, height,
                                          frame_id)
            self.writer.write_message(f'{ns}/depth/points', POINTCLOUD_MSGTYPE, stamp,
                                      self._cloud(depth, K, frame.rgb, stamp, frame_id))
            self.messages += 2

    def _cloud(self, depth, K, rgb, stamp, frame_id):
        """Organised xyz + packed-rgb cloud of every n-th pixel (pinhole, z-depth)."""
        types = bag_io.typestore().types
        rows = np.arange(0, depth.shape[0], POINTS_DECIMATION)
        cols = np.arange(0, depth.shape[1], POINTS_DECIMATION)
        z = depth[np.ix_(rows, cols)].astype(np.float32)  # (h, w)
        x = (cols[None, :] - K[0, 2]) / K[0, 0] * z
        y = (rows[:, None] - K[1, 2]) / K[1, 1] * z
        colour = cv2.resize(rgb, (depth.shape[1], depth.shape[0]),
                            interpolation=cv2.INTER_AREA)[np.ix_(rows, cols)].astype(np.uint32)
        packed = (colour[..., 0] << 16) | (colour[..., 1] << 8) | colour[..., 2]
        points = np.empty(z.shape, dtype=[('x', '<f4'), ('y', '<f4'), ('z', '<f4'),
                                          ('rgb', '<u4')])
        invalid = ~(np.isfinite(z) & (z > 0))
        points['x'], points['y'], points['z'] = (np.where(invalid, np.nan, v)
                                                 for v in (x, y, z))
        points['rgb'] = packed
        fields = [types['sensor_msgs/msg/PointField'](name=name, offset=offset, datatype=7,
                                                      count=1)
                  for name, offset in POINT_FIELDS]
        sec, nanosec = bag_io.split_stamp(stamp)
        header = types['std_msgs/msg/Header'](
            stamp=types['builtin_interfaces/msg/Time'](sec=sec, nanosec=nanosec),
            frame_id=frame_id)
        return types[POINTCLOUD_MSGTYPE](
            header=header, height=z.shape[0], width=z.shape[1], fields=fields,
            is_bigendian=False, point_step=16, row_step=16 * z.shape[1],
            data=np.frombuffer(points.tobytes(), np.uint8), is_dense=not bool(invalid.any()))

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
