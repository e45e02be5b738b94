"""Networks of the geometric-pretraining model (Wang et al., ICRA 2020), without torchvision.

The Y-shaped model: one structure encoder (ResNet, frame t alone) feeds a depth decoder and, with a
128-d motion latent from a two-frame motion encoder joined at the bottleneck, a flow decoder.
Training code calls the model through `forward` (so DistributedDataParallel sees every use);
`forward` keeps its results in locals, never on `self`, because the serving and the training
thread run the same code on different module instances.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from structflow_ros.core.config import SIZE_MULTIPLE, ModelConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
# Brightness and contrast (mean and standard deviation over all pixels and channels, [0, 1])
# of a typical real camera frame, the target of input_norm 'per_image'. Measured: KITTI
# 0.38 / 0.23, four dashcam clips 0.31-0.51 / 0.21-0.25; the synthetic world is duller
# (day 0.45 / 0.12, room 0.48 / 0.10, fog 0.64 / 0.09).
TYPICAL_FRAME_MEAN = 0.45
TYPICAL_FRAME_STD = 0.22
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_image(image):
    """Accept uint8 [0, 255] or float [0, 1] RGB (B, 3, H, W); return float in [0, 1]."""
    if not isinstance(image, torch.Tensor):
        raise ValueError(f'expected a torch.Tensor image, got {type(image).__name__}')
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f'expected an RGB batch of shape (B, 3, H, W), got {tuple(image.shape)}')
    if image.dtype == torch.uint8:
        return image.float() / 255.0
    if not image.is_floating_point():
        raise ValueError(f'expected uint8 [0, 255] or float [0, 1] images, got {image.dtype}')
    return image


def check_divisible(image, multiple=SIZE_MULTIPLE):
    height, width = image.shape[-2:]
    if height % multiple or width % multiple:
        raise ValueError(
            f'network input {height}x{width} (HxW) is not a multiple of {multiple}; pad it '
            f'(structflow_ros.core.inference.pad_to_multiple) or resize to e.g. '
            f'{-(-height // multiple) * multiple}x{-(-width // multiple) * multiple}')


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels, channels, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity, inplace=True)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels, channels, stride=1):
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        return F.relu(out + identity, inplace=True)


_RESNET_LAYOUTS = {
    'resnet18': (BasicBlock, (2, 2, 2, 2)),
    'resnet50': (Bottleneck, (3, 4, 6, 3)),
}


class StructureEncoder(nn.Module):
    """ResNet on one frame; returns 5 feature maps at 1/2, 1/4, 1/8, 1/16 and 1/32 resolution.

    Normalises its own input, so callers pass raw RGB: ImageNet statistics (monodepth2), after
    taking out each frame's own brightness and contrast when input_norm is 'per_image'.
    """

    def __init__(self, name='resnet18', input_norm='imagenet'):
        super().__init__()
        if name not in _RESNET_LAYOUTS:
            raise ValueError(f"unknown encoder '{name}'; choose from {', '.join(_RESNET_LAYOUTS)}")
        self.input_norm = input_norm
        block, blocks_per_stage = _RESNET_LAYOUTS[name]
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, in_channels = [], 64
        for index, (channels, count) in enumerate(zip((64, 128, 256, 512), blocks_per_stage)):
            layers = []
            for block_index in range(count):
                stride = 2 if (index > 0 and block_index == 0) else 1
                layers.append(block(in_channels, channels, stride))
                in_channels = channels * block.expansion
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.num_ch_enc = (64,) + tuple(c * block.expansion for c in (64, 128, 256, 512))
        # Not persistent: constants, not weights (checkpoints hold only learned values).
        self.register_buffer('mean', torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer('std', torch.tensor(IMAGENET_STD).view(1, 3, 1, 1),
                             persistent=False)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode='fan_out', nonlinearity='relu')

    def forward(self, image):
        image = normalize_image(image)
        if self.input_norm == 'per_image':
            # Every frame brought to one brightness and contrast (those of a typical frame, so
            # the ImageNet step below sees the range it was trained on): a hazy or dim view of a
            # street then looks like a clear one, not like a plain wall of a room.
            mean = image.mean(dim=(1, 2, 3), keepdim=True)            # (B, 1, 1, 1)
            std = image.std(dim=(1, 2, 3), keepdim=True).clamp_min(0.02)
            image = (image - mean) / std * TYPICAL_FRAME_STD + TYPICAL_FRAME_MEAN
        x = (image - self.mean) / self.std
        check_divisible(x)
        f0 = F.relu(self.bn1(self.conv1(x)), inplace=True)
        f1 = self.layer1(self.maxpool(f0))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return [f0, f1, f2, f3, f4]


# Inputs of at most this many pixels (a 2x2 map) run in float32 under autocast; see below.
TINY_CONV_INPUT = 4


class TwoFrameEncoder(nn.Module):
    """PoseNet-like conv stack on two stacked frames, globally pooled to a vector."""

    def __init__(self, out_dim, channels=(16, 32, 64, 128, 128, 128, 128)):
        super().__init__()
        kernels = (7, 5, 3, 3, 3, 3, 3)
        layers, in_channels = [], 6
        for out_channels, kernel in zip(channels, kernels):
            layers += [nn.Conv2d(in_channels, out_channels, kernel, 2, kernel // 2),
                       nn.ReLU(inplace=True)]
            in_channels = out_channels
        self.convs = nn.Sequential(*layers)
        self.head = nn.Linear(in_channels, out_dim)

    def forward(self, frame0, frame1):
        # Centred roughly on mid-grey, as SfMLearner/monodepth2's pose networks do.
        x = torch.cat([normalize_image(frame0), normalize_image(frame1)], 1) - 0.45
        for layer in self.convs:
            if isinstance(layer, nn.Conv2d) and x.shape[-2] * x.shape[-1] <= TINY_CONV_INPUT \
                    and torch.is_autocast_enabled(x.device.type):
                # torch 2.13's bf16 weight gradient of a stride-2 convolution on a 1x1 input
                # is sometimes non-finite on AVX512-BF16 CPUs (measured: 24 of 30 trials at
                # batch 1); these layers cost nothing, so they run in float32.
                with torch.autocast(x.device.type, enabled=False):
                    x = layer(x.float())
            else:
                x = layer(x)
        # (B, C, h, w) -> (B, C)
        return self.head(x.mean(dim=(2, 3)))


class MotionEncoder(TwoFrameEncoder):
    """Squeezes the motion between two frames (ego-motion, moving objects) into one vector."""

    def __init__(self, motion_dim=128):
        super().__init__(motion_dim)


class PoseNet(nn.Module):
    """Relative camera pose between two frames as axis-angle and translation (monodepth2 style)."""

    def __init__(self):
        super().__init__()
        self.encoder = TwoFrameEncoder(6)

    def forward(self, frame0, frame1):
        # Small outputs at initialisation keep the first reprojections near identity.
        pose = 0.01 * self.encoder(frame0, frame1)  # (B, 6)
        return pose[:, :3], pose[:, 3:]


def conv3x3_elu(in_channels, out_channels):
    return nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(in_channels, out_channels, 3),
                         nn.ELU(inplace=True))


class UNetDecoder(nn.Module):
    """monodepth2-style decoder: upsample, join the encoder skip, predict at 4 scales."""

    def __init__(self, num_ch_enc, out_channels, num_scales=4, bottleneck_extra=0,
                 channels=(16, 32, 64, 96, 128)):
        super().__init__()
        self.num_scales = num_scales
        self.upconvs_0, self.upconvs_1 = nn.ModuleList(), nn.ModuleList()
        for level in range(4, -1, -1):
            in_channels = num_ch_enc[-1] + bottleneck_extra if level == 4 else channels[level + 1]
            self.upconvs_0.append(conv3x3_elu(in_channels, channels[level]))
            skip = num_ch_enc[level - 1] if level > 0 else 0
            self.upconvs_1.append(conv3x3_elu(channels[level] + skip, channels[level]))
        self.heads = nn.ModuleList(
            nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(channels[s], out_channels, 3))
            for s in range(num_scales))

    def forward(self, features, bottleneck=None, scales=None):
        """Outputs at `scales` (default: all); entries of scales not asked for are None.

        Serving asks for scale 0 only: the coarse heads exist for the multi-scale losses.
        """
        scales = range(self.num_scales) if scales is None else scales
        x = features[-1] if bottleneck is None else bottleneck
        outputs = [None] * self.num_scales
        for step, level in enumerate(range(4, -1, -1)):
            x = self.upconvs_0[step](x)
            x = F.interpolate(x, scale_factor=2, mode='nearest')
            if level > 0:
                x = torch.cat([x, features[level - 1]], 1)
            x = self.upconvs_1[step](x)
            if level in scales:
                outputs[level] = self.heads[level](x)
        return outputs


class DepthDecoder(UNetDecoder):
    """Sigmoid disparity at scales 0..3; scale s has shape (B, 1, H / 2^s, W / 2^s)."""

    def __init__(self, num_ch_enc, num_scales=4):
        super().__init__(num_ch_enc, 1, num_scales)

    def forward(self, features, scales=None):
        return [None if out is None else torch.sigmoid(out)
                for out in super().forward(features, scales=scales)]


class FlowDecoder(UNetDecoder):
    """Optical flow conditioned on the motion latent, which joins the structure features at the
    bottleneck. Scale s is (B, 2, H / 2^s, W / 2^s), in pixels of that scale (u right, v down).
    """

    def __init__(self, num_ch_enc, motion_dim=128, num_scales=4):
        super().__init__(num_ch_enc, 2, num_scales, bottleneck_extra=motion_dim)
        for head in self.heads:
            # Near-zero initial flow, but not exactly zero: gradients must reach every layer.
            nn.init.normal_(head[1].weight, std=1e-3)
            nn.init.zeros_(head[1].bias)

    def forward(self, features, motion):
        deepest = features[-1]
        motion_map = motion[:, :, None, None].expand(-1, -1, *deepest.shape[-2:])  # (B, M, h, w)
        return super().forward(features, torch.cat([deepest, motion_map], 1))


def disp_to_depth(disp, min_depth, max_depth):
    """Sigmoid disparity -> (scaled disparity, depth) in [min_depth, max_depth] (monodepth2)."""
    min_disp, max_disp = 1.0 / max_depth, 1.0 / min_depth
    scaled_disp = min_disp + (max_disp - min_disp) * disp
    return scaled_disp, 1.0 / scaled_disp


class StructFlowModel(nn.Module):
    """Structure encoder with a depth branch, a flow branch and (optionally) a pose network.

    `forward(image, image_next, ...)` returns a dict with only the outputs asked for:
      'features': encoder features of `image`; 'disp': list of disparities of `image`;
      'flow': forward flows image -> image_next; 'flow_backward': image_next -> image;
      'pose': (axis_angle, translation) of image -> image_next.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.structure_encoder = StructureEncoder(config.encoder, config.input_norm)
        num_ch_enc = self.structure_encoder.num_ch_enc
        self.depth_decoder = DepthDecoder(num_ch_enc, config.num_scales)
        if config.flow_branch:
            self.motion_encoder = MotionEncoder(config.motion_dim)
            self.flow_decoder = FlowDecoder(num_ch_enc, config.motion_dim, config.num_scales)
        if config.pose_branch:
            self.pose_net = PoseNet()

    def module_names(self):
        """Names of the top-level sub-networks this configuration has."""
        return [name for name, _ in self.named_children()]

    def forward(self, image, image_next=None, *, depth=True, flow=False, flow_backward=False,
                pose=False):
        if (flow or flow_backward or pose) and image_next is None:
            raise ValueError('flow, flow_backward and pose need image_next (the second frame)')
        if (flow or flow_backward) and not self.config.flow_branch:
            raise ValueError('this model has no flow branch (ModelConfig.flow_branch=False)')
        if pose and not self.config.pose_branch:
            raise ValueError('this model has no pose network (ModelConfig.pose_branch=False)')
        if image_next is not None and image_next.shape != image.shape:
            raise ValueError(f'frames differ in shape: {tuple(image.shape)} vs '
                             f'{tuple(image_next.shape)}')
        outputs = {}
        features = self.structure_encoder(image)
        outputs['features'] = features
        if depth:
            outputs['disp'] = self.depth_decoder(features)
        if flow:
            motion = self.motion_encoder(image, image_next)
            outputs['flow'] = self.flow_decoder(features, motion)
        if flow_backward:
            features_next = self.structure_encoder(image_next)
            motion_back = self.motion_encoder(image_next, image)
            outputs['flow_backward'] = self.flow_decoder(features_next, motion_back)
        if pose:
            outputs['pose'] = self.pose_net(image, image_next)
        return outputs

    def depth(self, image):
        """Disparity pyramid of one frame (convenience for inference and evaluation)."""
        return self.forward(image)['disp']

    def flow(self, frame0, frame1):
        """Forward flow pyramid frame0 -> frame1."""
        return self.forward(frame0, frame1, depth=False, flow=True)['flow']


def build_model(config: ModelConfig = None, **overrides) -> StructFlowModel:
    """Build the model from a config (or ModelConfig defaults with keyword overrides)."""
    if config is None:
        config = ModelConfig(**overrides)
    elif overrides:
        config = ModelConfig.from_dict({**config.to_dict(), **overrides})
    return StructFlowModel(config)
