"""Depth and flow evaluation with the project's protocol (design.md, 'Evaluation protocol').

Depth: Eigen metrics over valid ground truth with per-frame median scaling, beside the
constant-depth floor and the image-independent prior floor (the geometric mean of the model's
own predictions over the set, for every frame) on the same frames, and the image gain.
Flow: EPE and Fl-all, beside OpenCV's Farneback and DIS.
"""
import cv2
import numpy as np
import torch
import torch.nn.functional as F

from structflow_ros.core.inference import (DepthPredictor, crop_to, network_frame,
                                          pad_to_multiple)
from structflow_ros.core.metrics import (PriorFloor, aggregate_depth_metrics,
                                         constant_depth_floor, depth_metrics, flow_metrics,
                                         image_gain)


def evaluate_depth(model, frames, max_depth=80.0, garg_crop=False, device='cpu',
                   keep_predictions=False, keep_aspect=False):
    """Depth metrics of `model` on one set, beside its two floors.

    frames: iterable of dicts with 'rgb' (H, W, 3) uint8, 'depth' (H, W) metres, optional
    'valid' and 'name'. keep_aspect: serve each frame at its own aspect (DepthPredictor).
    Returns {'model', 'floor', 'prior': aggregates, 'per_frame', 'floor_per_frame',
    'prior_per_frame': per-frame metrics, 'image_gain': 1 - AbsRel(model) / AbsRel(prior)}
    (+ 'predictions' with keep_predictions). The prior floor is the geometric mean of the
    model's predictions over the whole set (per image size), so it is scored after the last
    frame: the predictions are folded into one log-sum per size as they come (not kept unless
    asked), and each frame's ground truth is kept until then (PriorFloor).
    """
    predictor = DepthPredictor(model, device, keep_aspect=keep_aspect)
    per_frame, floors, predictions = [], [], []
    prior = PriorFloor(max_depth=max_depth, garg_crop=garg_crop)
    for frame in frames:
        pred = predictor.predict(frame['rgb'])  # resized back to the gt size
        metrics = depth_metrics(pred, frame['depth'], frame.get('valid'), max_depth=max_depth,
                                garg_crop=garg_crop)
        metrics['name'] = frame.get('name', str(len(per_frame)))
        per_frame.append(metrics)
        floors.append(constant_depth_floor(frame['depth'], frame.get('valid'),
                                           max_depth=max_depth, garg_crop=garg_crop))
        prior.add(pred, frame['depth'], frame.get('valid'))
        if keep_predictions:
            predictions.append(pred)
    priors = prior.per_frame()
    for metrics, entry in zip(per_frame, priors):
        entry['name'] = metrics['name']
    result = {'model': aggregate_depth_metrics(per_frame),
              'floor': aggregate_depth_metrics(floors),
              'prior': aggregate_depth_metrics(priors), 'per_frame': per_frame,
              'floor_per_frame': floors, 'prior_per_frame': priors}
    result['image_gain'] = image_gain(result['model']['abs_rel'], result['prior']['abs_rel'])
    if keep_predictions:
        result['predictions'] = predictions
    return result


@torch.inference_mode()
def predict_flow(model, rgb0, rgb1, device='cpu'):
    """Full-resolution flow (H, W, 2) in pixels from two RGB uint8 frames of any size."""
    height, width = rgb0.shape[:2]
    net_h, net_w = model.config.height, model.config.width
    frames = [network_frame(rgb, (net_h, net_w), device) for rgb in (rgb0, rgb1)]
    padded0, size = pad_to_multiple(frames[0])
    padded1, _ = pad_to_multiple(frames[1])
    flow = crop_to(model.flow(padded0, padded1)[0], size)  # (1, 2, h, w)
    flow = F.interpolate(flow, size=(height, width), mode='bilinear', align_corners=False)
    scale = torch.tensor([width / net_w, height / net_h], device=flow.device).view(1, 2, 1, 1)
    return (flow * scale)[0].permute(1, 2, 0).cpu().numpy()  # (H, W, 2)


def classical_flow(rgb0, rgb1, method):
    """OpenCV references: 'farneback' or 'dis' (DIS medium preset)."""
    grey0 = cv2.cvtColor(rgb0, cv2.COLOR_RGB2GRAY)
    grey1 = cv2.cvtColor(rgb1, cv2.COLOR_RGB2GRAY)
    if method == 'farneback':
        return cv2.calcOpticalFlowFarneback(grey0, grey1, None, 0.5, 5, 15, 3, 5, 1.2, 0)
    if method == 'dis':
        return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM).calc(grey0, grey1,
                                                                                 None)
    raise ValueError(f"unknown classical flow '{method}'; choose from farneback, dis")


def evaluate_flow(model, pairs, device='cpu', references=('zero', 'farneback', 'dis')):
    """pairs: iterable of (rgb0, rgb1, flow_gt (H, W, 2), valid (H, W)).

    Returns mean EPE / Fl-all for the model and each reference method on the same pixels.
    """
    sums = {}
    count = 0
    for rgb0, rgb1, gt, valid in pairs:
        count += 1
        results = {}
        if model is not None:
            results['model'] = flow_metrics(predict_flow(model, rgb0, rgb1, device), gt, valid)
        for ref in references:
            pred = np.zeros_like(gt) if ref == 'zero' else classical_flow(rgb0, rgb1, ref)
            results[ref] = flow_metrics(pred, gt, valid)
        for method, metrics in results.items():
            for key in ('epe', 'fl_all'):
                sums.setdefault(method, {}).setdefault(key, []).append(metrics[key])
    return {method: {key: float(np.nanmean(values)) for key, values in keys.items()}
            | {'pairs': count} for method, keys in sums.items()}
