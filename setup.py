"""ament_python package `structflow` (Python module `structflow_ros`)."""
from glob import glob

from setuptools import find_packages, setup

package_name = 'structflow'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.launch.py')),
        ('share/' + package_name + '/config', glob('config/*.yaml') + glob('config/*.rviz')
         + glob('config/*.xml')),
        ('share/' + package_name + '/models', glob('models/*.pt') + glob('models/*.safetensors')
         + glob('models/*.md')),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='structflow maintainers',
    maintainer_email='maintainers@structflow.dev',
    description='Monocular depth with on-robot self-supervised adaptation (flow pretraining).',
    license='Apache-2.0',
    extras_require={'test': ['pytest']},
    entry_points={
        'console_scripts': [
            'structflow = structflow_ros.cli.main:main',
            'depth_node = structflow_ros.ros.entry:depth_node',
        ],
    },
)
