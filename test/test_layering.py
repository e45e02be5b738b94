"""The package layering, read from the source tree's imports (every import statement, lazy ones
inside functions included), not from what happens to be imported at test time (issue 27):

- ros/ is the only package that imports rclpy, message_filters, launch or ROS message types;
- online/, replay/, core/, data/, training/ and tools/ import nothing from ros/ or cli/;
- core/ imports nothing of structflow_ros outside core/ (pure PyTorch).
"""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / 'structflow_ros'
ROS_TOP_LEVEL = {'rclpy', 'rcl_interfaces', 'sensor_msgs', 'std_msgs', 'std_srvs',
                 'diagnostic_msgs', 'builtin_interfaces', 'message_filters', 'sensor_msgs_py',
                 'launch', 'launch_ros', 'rosgraph_msgs', 'lifecycle_msgs',
                 'diagnostic_updater'}
BELOW_THE_EDGE = ('online', 'replay', 'core', 'data', 'training', 'tools')


def imports_in(text, package):
    """Every module an import statement of `text` names; relative imports resolved against
    `package` (the dotted package the file is in)."""
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split('.')
                base = parts[:len(parts) - node.level + 1]
                yield '.'.join(base + ([node.module] if node.module else []))
            else:
                yield node.module


def imports_of(path):
    package = '.'.join(('structflow_ros',) + path.relative_to(PACKAGE).parent.parts)
    return imports_in(path.read_text(), package)


def subpackage(path):
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else ''


def test_only_ros_imports_ros_and_nothing_below_imports_upwards():
    files = sorted(PACKAGE.rglob('*.py'))
    assert len(files) > 50, 'the source tree was not found'
    problems = []
    for path in files:
        where = subpackage(path)
        for module in imports_of(path):
            top = module.split('.')[0]
            if top in ROS_TOP_LEVEL and where != 'ros':
                problems.append(f'{path.relative_to(PACKAGE)} imports {module} (only ros/ may)')
            if not module.startswith('structflow_ros.'):
                continue
            target = module.split('.')[1]
            if where in BELOW_THE_EDGE and target in ('ros', 'cli'):
                problems.append(f'{path.relative_to(PACKAGE)} imports {module} ({where}/ is '
                                'below ros/ and cli/)')
            if where == 'core' and target != 'core':
                problems.append(f'{path.relative_to(PACKAGE)} imports {module} (core/ is pure '
                                'PyTorch)')
    assert not problems, '\n'.join(problems)


def test_the_walk_sees_lazy_and_relative_imports():
    """The checker itself: an import inside a function counts, a relative one is resolved."""
    names = list(imports_in('def f():\n    import rclpy\n    from ..ros import conversions\n',
                            'structflow_ros.online'))
    assert names == ['rclpy', 'structflow_ros.ros']
