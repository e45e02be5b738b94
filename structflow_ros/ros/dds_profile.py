"""The node's Fast DDS profile (config/fastdds.xml), used unless the environment names one.

Fast DDS reads its XML profile and rmw_fastrtps its RMW_FASTRTPS_USE_QOS_FROM_XML switch from
the environment when the context is created, so this runs in `main()` before `rclpy.init`. It
changes nothing when another RMW is chosen or when the user has a profile of their own: theirs
may tune transports for the robot, and one process takes one profile.
"""
import os

from structflow_ros.paths import fastdds_profile_path

PROFILE_VARIABLES = ('FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE')
# Fast DDS before 2.13 (Humble, Iron) reads only FASTRTPS_DEFAULT_PROFILES_FILE; later ones
# read FASTDDS_DEFAULT_PROFILES_FILE and warn that the FASTRTPS_ name is deprecated.
OLD_NAME_DISTROS = ('humble', 'iron')


def use_node_profile(environ=None):
    """Point Fast DDS at config/fastdds.xml unless told otherwise; returns a line for the log
    saying which profile is in force and why."""
    environ = os.environ if environ is None else environ
    rmw = environ.get('RMW_IMPLEMENTATION', '') or 'rmw_fastrtps_cpp'
    if not rmw.startswith('rmw_fastrtps'):
        return f'DDS: {rmw} (config/fastdds.xml applies to Fast DDS only)'
    for name in PROFILE_VARIABLES:
        if environ.get(name):
            return f'DDS: Fast DDS with your profile {environ[name]} ({name})'
    path = fastdds_profile_path()
    if not path.is_file():
        return f'DDS: Fast DDS defaults ({path} is missing)'
    environ['FASTDDS_DEFAULT_PROFILES_FILE'] = str(path)
    if environ.get('ROS_DISTRO', '') in OLD_NAME_DISTROS:
        environ['FASTRTPS_DEFAULT_PROFILES_FILE'] = str(path)
    environ['RMW_FASTRTPS_USE_QOS_FROM_XML'] = '1'
    return (f'DDS: Fast DDS with {path} (history memory released after each sample; set '
            'FASTDDS_DEFAULT_PROFILES_FILE to use your own)')
