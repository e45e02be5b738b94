"""scripts/replicate_real.py's reading of its seeds: a verdict only when every seed agrees and
the mean paired difference is larger than its spread (hand-made results, no training)."""
import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / 'scripts'
STARTS = ['scratch', 'real-video pretrained']


@pytest.fixture(scope='module')
def replicate_real():
    sys.path.insert(0, str(SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location('replicate_real',
                                                      SCRIPTS / 'replicate_real.py')
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SCRIPTS))


def results(pairs):
    """[(scratch AbsRel, pretrained AbsRel)] per seed -> the script's results list."""
    rows = []
    for seed, values in enumerate(pairs):
        for start, value in zip(STARTS, values):
            rows.append({'start': start, 'seed': seed,
                         'pooled': {'real_indoor': {'model': {'abs_rel': value}}}})
    return rows


@pytest.mark.parametrize('pairs, verdict', [
    ([(0.42, 0.40), (0.43, 0.41), (0.41, 0.39)], 'pretraining on real video helps'),
    ([(0.40, 0.42), (0.41, 0.43), (0.39, 0.41)], '**does not help**'),
    # Every seed a little better, but one seed carries it: within the spread.
    ([(0.416, 0.4155), (0.420, 0.419), (0.410, 0.398)], 'no difference beyond'),
    ([(0.42, 0.40), (0.41, 0.43), (0.41, 0.40)], 'no difference beyond'),
])
def test_verdict_needs_every_seed_and_more_than_the_spread(replicate_real, pairs, verdict):
    said = replicate_real._verdict(results(pairs), STARTS, 'real_indoor')
    assert verdict in said, said
    assert 'over 3 seeds' in said
