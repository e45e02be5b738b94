"""Read a folder written by `structflow render --format folder` (rgb/, depth/, camera.json).

One reader for the demo, evaluation and training, with one rule for the sky: it is written as
the far plane (camera.json `sky_depth_m`), not measured, so it is invalid ground truth; a folder
without that key has no sky cut-off.
"""
import json
from pathlib import Path
from typing import Iterator, Optional

import cv2
import numpy as np


class RenderFolderError(ValueError):
    """Not a readable `structflow render` folder; the message says what is missing."""


def is_render_folder(path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / 'camera.json').is_file() and (path / 'rgb').is_dir()


def read_meta(path) -> dict:
    path = Path(path)
    try:
        return json.loads((path / 'camera.json').read_text())
    except (OSError, ValueError) as error:
        raise RenderFolderError(f'{path}/camera.json cannot be read ({error}); expected a '
                                '`structflow render` folder') from None


def render_folder_frames(path, count: Optional[int] = None) -> Iterator[dict]:
    """Yield {'name', 'index', 'rgb' (H, W, 3) uint8, 'depth' (H, W) m, 'valid', 'K'} lazily,
    in the order camera.json lists the frames (else the sorted rgb/*.png)."""
    path = Path(path)
    meta = read_meta(path)
    records = meta.get('frames') or [
        {'index': number, 'rgb': f'rgb/{p.name}', 'depth': f'depth/{p.stem}.npy'}
        for number, p in enumerate(sorted((path / 'rgb').glob('*.png')))]
    if not records:
        raise RenderFolderError(f'{path} lists no frames (camera.json) and rgb/ holds no png; '
                                'expected a `structflow render` folder')
    sky = float(meta.get('sky_depth_m', np.inf))
    K = np.asarray(meta['K'], dtype=np.float64)
    for record in records[:count] if count else records:
        bgr = cv2.imread(str(path / record['rgb']), cv2.IMREAD_COLOR)
        if bgr is None:
            raise RenderFolderError(f"cannot read {path / record['rgb']}")
        depth = np.load(path / record['depth']).astype(np.float32)
        valid = np.isfinite(depth) & (depth > 0) & (depth < sky)
        yield {'name': f"{path.name}/{Path(record['rgb']).stem}", 'index': record['index'],
               'rgb': cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), 'depth': depth, 'valid': valid,
               'K': K.copy()}
