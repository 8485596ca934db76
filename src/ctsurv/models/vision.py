"""3D vision encoders: each maps a preprocessed CT (B, C, X, Y, Z) in RAS to a feature grid
(C = data.in_channels for the scratch encoders: HU windows and blob scales; 1 for the I3ResNet-152).

* ``ViT3D``: a small 3D Vision Transformer (MONAI's ``ViT``) trained from scratch, the CPU default.
* ``CNN3D``: a small 3D ResNet (MONAI's ``ResNet``, basic blocks) trained from scratch; convolutions
  learn local findings from a few hundred volumes faster than a ViT does.
* ``I3ResNet152``: the pretrained CT encoder (see :mod:`ctsurv.models.i3resnet`).

Both expose ``features(x) -> (B, D, gx, gy, gz)`` (the grid the projector pools) and
``tokens(x) -> (B, N, D)``; ``out_dim`` is D. ``build_vision_encoder`` picks one from the config.

``InputMaxSkip`` appends the last input channels (the blob channels of ``data.blob_sigmas_mm``),
max-pooled to the grid and batch-normalised, to an encoder's feature grid. A small, sparse
enhancement map is hard for a CNN trained from scratch to pass through its early layers (given the
blob channel as input only, it still read nodules at chance after 8 epochs), while the volume's
largest blobness alone reads them with AUC 0.955 (benchmarks/research/visibility.md, encoder_probe.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.nets import ResNet, ViT
from torch import nn

from ctsurv.config import VisionConfig
from ctsurv.errors import ConfigError


class ViT3D(nn.Module):
    """A plain 3D ViT: conv patch embedding, learnable positions, pre-norm transformer blocks."""

    def __init__(self, cfg: VisionConfig, image_size_xyz: tuple[int, int, int], in_channels: int = 1) -> None:
        super().__init__()
        patch_xyz = tuple(reversed(cfg.patch_size_zyx))
        for axis, (size, patch) in enumerate(zip(image_size_xyz, patch_xyz)):
            if size % patch:
                raise ConfigError(
                    f"vision.patch_size_zyx {cfg.patch_size_zyx} does not divide the input shape "
                    f"(Z Y X) {tuple(reversed(image_size_xyz))}; choose data.target_shape_zyx as multiples of the patch size"
                )
        self.grid_xyz = tuple(s // p for s, p in zip(image_size_xyz, patch_xyz))
        self.out_dim = cfg.dim
        self.vit = ViT(
            in_channels=in_channels,
            img_size=image_size_xyz,
            patch_size=patch_xyz,
            hidden_size=cfg.dim,
            mlp_dim=int(cfg.dim * cfg.mlp_ratio),
            num_layers=cfg.depth,
            num_heads=cfg.heads,
            dropout_rate=cfg.dropout,
            classification=False,
            qkv_bias=True,
        )
        for block in self.vit.blocks:  # MONAI keeps an unused cross-attention norm for checkpoint compatibility
            block.norm_cross_attn.requires_grad_(False)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        tokens, _ = self.vit(x)  # (B, N, D), N = gx*gy*gz in row-major (x, y, z) order
        return tokens

    def features(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        tokens = self.tokens(x)  # (B, N, D)
        return tokens.transpose(1, 2).reshape(b, self.out_dim, *self.grid_xyz)  # (B, D, gx, gy, gz)

    forward = features


class CNN3D(nn.Module):
    """A small 3D ResNet (one basic block per stage), the grid before pooling: stride 16 overall."""

    def __init__(self, cfg: VisionConfig, in_channels: int = 1) -> None:
        super().__init__()
        self.out_dim = cfg.cnn_widths[-1]
        self.resnet = ResNet(
            block="basic", layers=[1, 1, 1, 1], block_inplanes=list(cfg.cnn_widths), spatial_dims=3,
            n_input_channels=min(in_channels, 3), conv1_t_stride=2, no_max_pool=True, feed_forward=False,
        )
        self.resnet.avgpool = nn.Identity()  # the grid is pooled by the projector, not here
        # Channels past the third get a first convolution of their own, added to the ResNet's: the same
        # function as one wider convolution, but oneDNN's 3-channel kernels stay in use (on CPU one
        # 4-channel 7x7x7 convolution took 3.5x the time of a 3-channel one, and the whole step 1.6x)
        self.conv1_extra = None
        if in_channels > 3:
            c = self.resnet.conv1
            self.conv1_extra = nn.Conv3d(in_channels - 3, c.out_channels, c.kernel_size, c.stride, c.padding, bias=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        r = self.resnet
        h = r.conv1(x[:, :3])
        if self.conv1_extra is not None:
            h = h + self.conv1_extra(x[:, 3:])
        h = r.act(r.bn1(h))  # (B, w0, X/2, Y/2, Z/2); no max-pool: small lesions keep their voxels
        return r.layer4(r.layer3(r.layer2(r.layer1(h))))  # (B, w3, X/16, Y/16, Z/16)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(2).transpose(1, 2)  # (B, N, D)

    forward = features


class InputMaxSkip(nn.Module):
    """An encoder whose feature grid also carries its last ``skip`` input channels, max-pooled to the grid
    and batch-normalised."""

    def __init__(self, encoder: nn.Module, skip: int) -> None:
        super().__init__()
        self.encoder, self.skip = encoder, skip
        # batch norm: blobness peaks are 0.05-0.8, and Adam (steps of about lr per update) would need
        # thousands of steps to grow the weights that read such small values
        self.norm = nn.BatchNorm3d(skip)
        self.out_dim = encoder.out_dim + skip

    def features(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.encoder.features(x)  # (B, D, gx, gy, gz)
        pooled = F.adaptive_max_pool3d(x[:, -self.skip :], grid.shape[2:]).to(grid.dtype)  # (B, skip, gx, gy, gz)
        return torch.cat([grid, self.norm(pooled)], dim=1)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(2).transpose(1, 2)

    forward = features


def build_vision_encoder(
    cfg: VisionConfig, image_size_xyz: tuple[int, int, int], in_channels: int = 1, skip_channels: int = 0
) -> nn.Module:
    """The encoder named by ``cfg.encoder`` for inputs of ``in_channels`` × ``image_size_xyz`` voxels;
    the last ``skip_channels`` of them also reach the grid directly (:class:`InputMaxSkip`)."""
    if cfg.encoder in ("vit3d", "cnn3d"):
        encoder = ViT3D(cfg, image_size_xyz, in_channels) if cfg.encoder == "vit3d" else CNN3D(cfg, in_channels)
        return InputMaxSkip(encoder, skip_channels) if skip_channels else encoder
    if cfg.encoder == "i3resnet152":
        from ctsurv.models.i3resnet import load_i3resnet152

        return load_i3resnet152()
    raise ConfigError(f"unknown vision.encoder {cfg.encoder!r}; use 'vit3d', 'cnn3d' or 'i3resnet152'")
