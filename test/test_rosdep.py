"""package.xml resolves with the real rosdep for every supported distro (issue 30).

`rosdep install --from-paths src --ignore-src` is the README's second command on a robot; it
used to stop at `python3-safetensors` (no such key). This runs the real tool (rosdep from PyPI)
offline against ../shared/rosdistro, a snapshot of the rosdistro database, as a user would on
Humble (Ubuntu jammy), Jazzy and Kilted (noble), in simulate mode (nothing is installed).
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ROSDISTRO = Path(os.environ.get('STRUCTFLOW_ROSDISTRO', REPO_ROOT.parent / 'shared' / 'rosdistro'))
DISTROS = [('humble', 'ubuntu:jammy'), ('jazzy', 'ubuntu:noble'), ('kilted', 'ubuntu:noble')]


def rosdep_command():
    found = shutil.which('rosdep', path=str(Path(sys.executable).parent)) or shutil.which('rosdep')
    if found is None:
        pytest.skip('rosdep is not installed (requirements.txt installs it: pip install rosdep)')
    return found


@pytest.mark.parametrize('distro, os_name', DISTROS)
def test_every_package_xml_key_resolves(tmp_path, distro, os_name):
    if not (ROSDISTRO / 'index-v4.yaml').is_file():
        pytest.skip(f'the rosdistro snapshot {ROSDISTRO} is absent (CI has ../shared/rosdistro)')
    rosdep = rosdep_command()
    workspace = tmp_path / 'ws' / 'src' / 'structflow'
    workspace.mkdir(parents=True)
    shutil.copy(REPO_ROOT / 'package.xml', workspace / 'package.xml')
    sources = tmp_path / 'sources.list.d'
    sources.mkdir()
    (sources / '20-default.list').write_text(
        f'yaml file://{ROSDISTRO}/rosdep/base.yaml\n'
        f'yaml file://{ROSDISTRO}/rosdep/python.yaml\n')
    env = dict(os.environ, ROSDEP_SOURCE_PATH=str(sources), ROS_HOME=str(tmp_path / 'home'),
               ROSDISTRO_INDEX_URL=f'file://{ROSDISTRO}/index-v4.yaml')
    update = subprocess.run([rosdep, 'update', '--rosdistro', distro], env=env,
                            capture_output=True, text=True, timeout=300)
    assert update.returncode == 0, update.stdout[-2000:] + update.stderr[-2000:]
    install = subprocess.run([rosdep, 'install', '--simulate', '--from-paths',
                              str(tmp_path / 'ws' / 'src'), '--ignore-src', '--rosdistro',
                              distro, '--os', os_name, '-y'],
                             env=env, capture_output=True, text=True, timeout=300)
    output = install.stdout + install.stderr
    assert install.returncode == 0 and 'Cannot locate rosdep definition' not in output, output
    # What it would install: the ROS packages of that distro, and apt/pip for the rest.
    assert f'ros-{distro}-rclpy' in output and 'python3-torch' in output
