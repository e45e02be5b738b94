"""structflow: monocular depth with on-robot self-supervised adaptation (flow pretraining).

Layers (README.md, Development): `core` is pure PyTorch/NumPy and never imports ROS; `data`
reads videos, image folders, ROS 2 bags and renders the synthetic world; `training` runs the
offline commands; `online` holds the versioned weight store; `ros` is the node and its message
conversions; `cli` is the one `structflow` command.
"""
__version__ = '0.1.0'
