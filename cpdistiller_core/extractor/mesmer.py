"""Mesmer's feature path in PyTorch: deepcell 0.12.10 ``PanopticNet`` up to the ``C5_reduced`` layer.

Architecture (read from deepcell 0.12.10 ``model_zoo/panopticnet.py``, ``model_zoo/fpn.py``,
``layers/location.py``, ``utils/backbone_utils.py`` and ``keras.applications.resnet``), for a
tile batch x [B, 2, s, s] (channels first; s a multiple of 32, Mesmer was trained with s = 256):

    input_0               [B, 2, s, s]     (no ImageNormalization2D: Mesmer uses norm_method=None)
    location (Location2D) [B, 2, s, s]     row index / (s-1), column index / (s-1)
    concatenate_location  [B, 4, s, s]
    conv_channels         [B, 3, s, s]     1x1 conv to the backbone's 3 channels
    ResNet50 (Keras v1, include_top=False, BN eps 1.001e-5, convs with bias)
      conv1_*             [B, 64, s/2, s/2] -> pool1 [B, 64, s/4, s/4]
      conv2_block{1..3}   [B, 256,  s/4,  s/4]
      conv3_block{1..4}   [B, 512,  s/8,  s/8]
      conv4_block{1..6}   [B, 1024, s/16, s/16]
      conv5_block{1..3}   [B, 2048, s/32, s/32]   = C5 (conv5_block3_out)
    C5_reduced            [B, 256, s/32, s/32]     1x1 conv (the FPN's first layer on C5)

Parameters live in ``self.layers`` (a ModuleDict keyed by the Keras layer names), so the state dict
keys are ``layers.<keras name>.<weight|bias|running_mean|running_var>`` and the Keras weights map
one to one (``convert.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Blocks per ResNet-50 stage and the stage's bottleneck width.
RESNET50_STAGES: tuple[tuple[str, int, int, int], ...] = (
    ("conv2", 64, 3, 1), ("conv3", 128, 4, 2), ("conv4", 256, 6, 2), ("conv5", 512, 3, 2),
)
BN_EPS = 1.001e-5  # keras.applications.resnet
FEATURE_CHANNELS = 256  # C5_reduced filters (fpn feature_size)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=0.01)


class MesmerC5Reduced(nn.Module):
    """Tiles [B, 2, s, s] (float, pre-processed) -> C5_reduced features [B, 256, s/32, s/32]."""

    def __init__(self, in_channels: int = 2, location: bool = True) -> None:
        super().__init__()
        self.location = location
        L: dict[str, nn.Module] = {}
        L["conv_channels"] = nn.Conv2d(in_channels + (2 if location else 0), 3, 1)
        L["conv1_conv"] = nn.Conv2d(3, 64, 7, stride=2)
        L["conv1_bn"] = _bn(64)
        self.blocks: list[tuple[str, int, bool]] = []  # (name, stride, has projection shortcut)
        cin = 64
        for stage, width, n_blocks, stride in RESNET50_STAGES:
            for b in range(1, n_blocks + 1):
                name = f"{stage}_block{b}"
                st = stride if b == 1 else 1
                if b == 1:
                    L[f"{name}_0_conv"] = nn.Conv2d(cin, 4 * width, 1, stride=st)
                    L[f"{name}_0_bn"] = _bn(4 * width)
                L[f"{name}_1_conv"] = nn.Conv2d(cin, width, 1, stride=st)
                L[f"{name}_1_bn"] = _bn(width)
                L[f"{name}_2_conv"] = nn.Conv2d(width, width, 3, padding=1)
                L[f"{name}_2_bn"] = _bn(width)
                L[f"{name}_3_conv"] = nn.Conv2d(width, 4 * width, 1)
                L[f"{name}_3_bn"] = _bn(4 * width)
                self.blocks.append((name, st, b == 1))
                cin = 4 * width
        L["C5_reduced"] = nn.Conv2d(cin, FEATURE_CHANNELS, 1)
        self.layers = nn.ModuleDict(L)

    @staticmethod
    def location_channels(x: Tensor) -> Tensor:
        """Location2D: [B, 2, H, W] with row / (H-1) and column / (W-1) (deepcell.layers.location)."""
        B, _, H, W = x.shape
        ys = torch.arange(H, dtype=x.dtype, device=x.device) / max(H - 1, 1)
        xs = torch.arange(W, dtype=x.dtype, device=x.device) / max(W - 1, 1)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([gy, gx]).unsqueeze(0).expand(B, -1, -1, -1)

    def _block(self, x: Tensor, name: str, has_shortcut: bool) -> Tensor:
        L = self.layers
        shortcut = L[f"{name}_0_bn"](L[f"{name}_0_conv"](x)) if has_shortcut else x
        y = F.relu(L[f"{name}_1_bn"](L[f"{name}_1_conv"](x)))
        y = F.relu(L[f"{name}_2_bn"](L[f"{name}_2_conv"](y)))
        y = L[f"{name}_3_bn"](L[f"{name}_3_conv"](y))
        return F.relu(shortcut + y)

    def forward(self, x: Tensor) -> Tensor:
        """x [B, 2, s, s] -> [B, 256, s/32, s/32]."""
        L = self.layers
        if self.location:
            x = torch.cat([x, self.location_channels(x)], dim=1)
        x = L["conv_channels"](x)
        x = F.pad(x, (3, 3, 3, 3))                                   # conv1_pad
        x = F.relu(L["conv1_bn"](L["conv1_conv"](x)))
        x = F.max_pool2d(F.pad(x, (1, 1, 1, 1)), 3, stride=2)       # pool1_pad (zeros) + pool1_pool
        for name, _, has_shortcut in self.blocks:
            x = self._block(x, name, has_shortcut)
        return L["C5_reduced"](x)


def random_init(model: MesmerC5Reduced, seed: int = 0) -> MesmerC5Reduced:
    """Deterministic random weights, with non-trivial BN statistics (for tests only, never a model)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith("running_mean") or name.endswith("bias"):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
            elif t.ndim == 1:  # BN gamma
                t.copy_(0.5 + 0.5 * torch.rand(t.shape, generator=g))
            else:
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=g) * (2.0 / fan_in) ** 0.5)
    return model
