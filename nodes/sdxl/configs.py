"""SDXL model configs as data: the real base / refiner presets (paper Table 1, sgm yamls), the latent format, and
tiny presets for the demo model and the tests."""
from __future__ import annotations

from dataclasses import dataclass

from ..latent_format import LatentFormat

FOURIER_DIM = 256  # width of each size / crop / aesthetic embedding in y


@dataclass(frozen=True)
class UNetConfig:
    model_channels: int
    channel_mult: tuple[int, ...]
    transformer_depth: tuple[int, ...]  # effective depth per level; 0 = no attention at that level
    transformer_depth_middle: int
    context_dim: int
    adm_in_channels: int  # width of the vector y (pooled text + Fourier features); 0: no y (SD 1.x / 2.x)
    num_res_blocks: int = 2
    num_head_channels: int = 64  # SDXL / SD 2.x convention; single files do not store heads
    in_channels: int = 4
    out_channels: int = 4
    num_heads: int = 0  # a fixed head count at every level instead (SD 1.x: 8); 0 = channels // num_head_channels
    use_linear_in_transformer: bool = True  # SpatialTransformer proj_in/out as Linear; SD 1.x has 1×1 convs

    def __post_init__(self):
        if len(self.transformer_depth) != len(self.channel_mult):
            raise ValueError("UNetConfig: transformer_depth needs one entry per channel_mult level")
        for c in self.channels:
            if c % 32:
                raise ValueError(f"UNetConfig: channel count {c} is not a multiple of 32 (GroupNorm groups)")

    @property
    def channels(self) -> list[int]:
        return [self.model_channels * m for m in self.channel_mult]

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels

    def heads(self, channels: int) -> int:
        return self.num_heads or channels // self.num_head_channels


@dataclass(frozen=True)
class VAEConfig:
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    in_channels: int = 3
    out_channels: int = 3
    scaling_factor: float = 0.13025

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


SDXL_BASE_UNET = UNetConfig(320, (1, 2, 4), (0, 2, 10), 10, context_dim=2048, adm_in_channels=2816)
SDXL_REFINER_UNET = UNetConfig(384, (1, 2, 4, 4), (0, 4, 4, 0), 4, context_dim=1280, adm_in_channels=2560)
SDXL_VAE = VAEConfig()
# Preview factors fitted to SDXL's scaled latents (sdxl.md §15).
SDXL_LATENT = LatentFormat(channels=4, scale_factor=SDXL_VAE.scaling_factor,
                           rgb_factors=((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068),
                                        (0.1076, 0.1111, -0.0362), (-0.3165, -0.2492, -0.2188)),
                           rgb_bias=(0.1084, -0.0175, -0.0011))

# Tiny presets: same structure (3-level base, 4-level refiner whose last level has no attention, f=8 VAE),
# 64-channel heads so the single-file head convention holds, channel counts multiples of 32.
TINY_CLIP_L_WIDTH = 32
TINY_BIGG_WIDTH = 32
TINY_BASE_UNET = UNetConfig(32, (1, 2, 4), (0, 1, 2), 2, context_dim=TINY_CLIP_L_WIDTH + TINY_BIGG_WIDTH,
                            adm_in_channels=TINY_BIGG_WIDTH + 6 * FOURIER_DIM)
TINY_REFINER_UNET = UNetConfig(32, (1, 2, 4, 4), (0, 1, 1, 0), 1, context_dim=TINY_BIGG_WIDTH,
                               adm_in_channels=TINY_BIGG_WIDTH + 5 * FOURIER_DIM)
TINY_VAE = VAEConfig(ch=32, ch_mult=(1, 2, 2, 2))
