"""Networks: shapes at any size, input normalisation, shape/dtype errors, thread-safe forward."""
import pytest
import torch

from structflow_ros.core import DepthPredictor, ModelConfig, build_model, pad_to_multiple
from structflow_ros.core.inference import crop_to, resolve_device
from structflow_ros.core.networks import StructureEncoder


@pytest.fixture(scope='module')
def tiny_model():
    torch.manual_seed(0)
    return build_model(ModelConfig(height=64, width=96)).eval()


def test_outputs_have_documented_shapes(tiny_model):
    frames = torch.rand(2, 3, 64, 96)
    out = tiny_model(frames, frames.flip(-1), flow=True, flow_backward=True, pose=True)
    assert [tuple(f.shape) for f in out['features']] == [
        (2, 64, 32, 48), (2, 64, 16, 24), (2, 128, 8, 12), (2, 256, 4, 6), (2, 512, 2, 3)]
    for scale in range(4):
        size = (64 >> scale, 96 >> scale)
        assert tuple(out['disp'][scale].shape) == (2, 1) + size
        assert tuple(out['flow'][scale].shape) == (2, 2) + size
        assert tuple(out['flow_backward'][scale].shape) == (2, 2) + size
    assert all(0 < d.min() and d.max() < 1 for d in out['disp'])
    axis_angle, translation = out['pose']
    assert axis_angle.shape == translation.shape == (2, 3)


def test_resnet50_channels():
    encoder = StructureEncoder('resnet50')
    assert encoder.num_ch_enc == (64, 256, 512, 1024, 2048)
    features = encoder(torch.rand(1, 3, 64, 64))
    assert [f.shape[1] for f in features] == list(encoder.num_ch_enc)


def test_uint8_and_float_inputs_agree(tiny_model):
    image = torch.randint(0, 256, (1, 3, 64, 96), dtype=torch.uint8)
    with torch.no_grad():
        from_uint8 = tiny_model.depth(image)[0]
        from_float = tiny_model.depth(image.float() / 255)[0]
    torch.testing.assert_close(from_uint8, from_float)


@pytest.mark.parametrize('bad, message', [
    (torch.rand(3, 64, 96), r'\(B, 3, H, W\)'),
    (torch.rand(1, 1, 64, 96), r'\(B, 3, H, W\)'),
    (torch.zeros(1, 3, 64, 96, dtype=torch.int32), 'uint8'),
    (torch.rand(1, 3, 60, 96), 'multiple of 32'),
])
def test_bad_inputs_name_what_is_expected(tiny_model, bad, message):
    with pytest.raises(ValueError, match=message):
        tiny_model(bad)


def test_flow_needs_second_frame_and_branch(tiny_model):
    with pytest.raises(ValueError, match='image_next'):
        tiny_model(torch.rand(1, 3, 64, 96), flow=True)
    no_flow = build_model(ModelConfig(height=64, width=96, flow_branch=False))
    assert 'flow_decoder' not in no_flow.module_names()
    with pytest.raises(ValueError, match='no flow branch'):
        no_flow(torch.rand(1, 3, 64, 96), torch.rand(1, 3, 64, 96), flow=True)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match='resnet18, resnet50'):
        ModelConfig(encoder='vgg')
    with pytest.raises(ValueError, match='height'):
        ModelConfig(height=8)
    with pytest.raises(ValueError, match='unknown ModelConfig keys'):
        ModelConfig.from_dict({'encoder': 'resnet18', 'colour': 'red'})
    with pytest.raises(ValueError, match="input_norm 'local'; choose from imagenet, per_image"):
        ModelConfig(input_norm='local')


def test_per_image_input_norm_ignores_brightness_and_contrast(tiny_model):
    torch.manual_seed(0)
    model = build_model(ModelConfig(height=64, width=96, input_norm='per_image')).eval()
    # The same weights: the option adds no parameter, so either config loads the other's file.
    assert set(model.state_dict()) == set(tiny_model.state_dict())
    frames = torch.rand(2, 3, 64, 96) * 0.5 + 0.25
    hazy = frames * 0.4 + 0.5            # brighter, 0.4x the contrast
    with torch.no_grad():
        assert torch.allclose(model(frames)['disp'][0], model(hazy)['disp'][0], atol=1e-5)
        # The fixed ImageNet normalisation sees the haze.
        change = (tiny_model(frames)['disp'][0] - tiny_model(hazy)['disp'][0]).abs().max()
    assert change > 1e-3
    # Checkpoints written before the option describe themselves without it: ImageNet.
    old = {k: v for k, v in ModelConfig().to_dict().items() if k != 'input_norm'}
    assert ModelConfig.from_dict(old).input_norm == 'imagenet'


def test_pad_and_crop_round_trip():
    image = torch.rand(1, 3, 50, 70)
    padded, size = pad_to_multiple(image)
    assert padded.shape[-2:] == (64, 96)
    torch.testing.assert_close(crop_to(padded, size), image)


def test_predictor_takes_any_size(tiny_model):
    import numpy as np
    predictor = DepthPredictor(tiny_model, 'cpu', input_size=(50, 70))
    rgb = np.random.default_rng(0).integers(0, 256, (123, 201, 3), dtype=np.uint8)
    depth = predictor.predict(rgb)
    assert depth.shape == (123, 201) and depth.dtype == np.float32
    assert np.isfinite(depth).all() and (depth > 0).all()
    with pytest.raises(ValueError, match=r'\(H, W, 3\)'):
        predictor.predict(rgb[..., 0])


def test_resolve_device():
    assert resolve_device('cpu').type == 'cpu'
    assert resolve_device('auto').type == ('cuda' if torch.cuda.is_available() else 'cpu')
    with pytest.raises(ValueError, match='auto, cpu, cuda, cuda:N'):
        resolve_device('tpu')
