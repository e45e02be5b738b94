"""Procedural driving world (and indoor rooms) rendered on the CPU with exact ground truth.

    from structflow_ros.data.synthetic import render_sequence, SyntheticSource, DOMAINS
    for frame in render_sequence('fog', num_frames=50, height=96, width=320, seed=1):
        frame.rgb, frame.depth, frame.flow, frame.flow_valid, frame.K, frame.pose_c2w

See render.py for the ground-truth conventions and domains.py for the looks.
"""
from structflow_ros.data.synthetic.domains import DOMAINS, DomainConfig, get_domain, parse_domains
from structflow_ros.data.synthetic.render import (
    Renderer, SyntheticDataset, SyntheticDepthDataset, SyntheticFlowDataset, SyntheticFrame,
    SyntheticSource, measure_render_speed, open_renderer, render_sequence)

__all__ = ['DOMAINS', 'DomainConfig', 'get_domain', 'parse_domains', 'Renderer',
           'SyntheticDataset', 'SyntheticDepthDataset', 'SyntheticFlowDataset',
           'SyntheticFrame', 'SyntheticSource', 'measure_render_speed', 'open_renderer',
           'render_sequence']
