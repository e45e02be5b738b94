"""Where the package's installed files (models/, config/, launch/) are.

On a ROS 2 install (colcon or `pip install .`) they live in share/structflow, found through the
ament index. In a source checkout or an editable install (which does not install data_files)
they are beside the `structflow_ros` folder.
"""
import os
from pathlib import Path

PACKAGE_NAME = 'structflow'
DEFAULT_WEIGHTS_NAME = 'structflow_default.pt'
SOURCE_ROOT = Path(__file__).resolve().parents[1]


def share_dir():
    """share/structflow of an installed package, else the source checkout root."""
    override = os.environ.get('STRUCTFLOW_SHARE_DIR')
    if override:
        return Path(override)
    try:
        from ament_index_python.packages import get_package_share_directory
        share = Path(get_package_share_directory(PACKAGE_NAME))
        if (share / 'models').is_dir():
            return share
    except Exception:  # noqa: BLE001 - not installed through ament, or no ament_index here
        pass
    return SOURCE_ROOT


def default_weights_path():
    return share_dir() / 'models' / DEFAULT_WEIGHTS_NAME


def default_params_file():
    return share_dir() / 'config' / 'structflow.yaml'


def fastdds_profile_path():
    return share_dir() / 'config' / 'fastdds.xml'
