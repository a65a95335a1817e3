"""The latent-diffusion UNet (CompVis / sgm ``openaimodel.UNetModel``) of SD 1.x, SD 2.x and SDXL as plain modules
whose state-dict keys are exactly the original checkpoints' (``model.diffusion_model.`` stripped). The families
differ in config only (nodes.sdxl.configs.UNetConfig). Structure and layer details: sdxl.md §2."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configs import UNetConfig
from .embeddings import timestep_embedding


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in fp32 and cast back (ResBlocks and the output head)."""

    def __init__(self, channels: int):
        super().__init__(32, channels, eps=1e-5)

    def forward(self, x):
        w, b = self.weight.float(), self.bias.float()
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).type(x.dtype)


class Conv2d(nn.Conv2d):
    """nn.Conv2d that, on CPU and for output maps of at most 64 pixels, runs as one GEMM over the unfolded patches.

    There (SDXL's deepest level for latents up to 32×32) oneDNN's direct convolution leaves the cores half idle
    (8×8, 1280→1280 channels: 51 ms vs 28 ms on 2 AVX2 cores) while the unfold is cheap; on larger maps the
    direct convolution is the faster one. The UNet's convs are all zero-padded with one group."""

    def forward(self, x):
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        out_h, out_w = (x.shape[-2] + 2 * ph - kh) // sh + 1, (x.shape[-1] + 2 * pw - kw) // sw + 1
        if x.device.type != "cpu" or out_h * out_w > 64:
            return super().forward(x)
        cols = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)  # [B, C·kh·kw, pixels]
        out = self.weight.flatten(1) @ cols + self.bias[:, None]
        return out.view(x.shape[0], -1, out_h, out_w)


def indexed(layers: dict[int, nn.Module]) -> nn.ModuleDict:
    """The weighted layers of one of the original's ``nn.Sequential``s, under their indices there. Its SiLU and
    Dropout(0) layers hold no weights and run as functions here (dropout is the identity at inference); the keys
    keep their numbers (``in_layers.2.weight``). Fewer modules also build faster: 2,017 → 1,739 in the base UNet."""
    return nn.ModuleDict({str(i): layer for i, layer in layers.items()})


class ResBlock(nn.Module):
    """in_layers: GroupNorm, SiLU, conv · emb_layers: SiLU, Linear · out_layers: GroupNorm, SiLU, Dropout, conv."""

    def __init__(self, ch_in: int, ch_out: int, emb_ch: int):
        super().__init__()
        self.in_layers = indexed({0: GroupNorm32(ch_in), 2: Conv2d(ch_in, ch_out, 3, padding=1)})
        self.emb_layers = indexed({1: nn.Linear(emb_ch, ch_out)})
        self.out_layers = indexed({0: GroupNorm32(ch_out), 3: Conv2d(ch_out, ch_out, 3, padding=1)})
        self.skip_connection = nn.Identity() if ch_in == ch_out else Conv2d(ch_in, ch_out, 1)

    def forward(self, x, emb):
        h = self.in_layers["2"](F.silu(self.in_layers["0"](x)))
        h = h + self.emb_layers["1"](F.silu(emb)).type(h.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers["3"](F.silu(self.out_layers["0"](h)))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])  # the original's [Linear, Dropout]

    def forward(self, x, context=None):
        context = x if context is None else context
        b, n, c = x.shape
        q, k, v = (t.view(b, -1, self.heads, c // self.heads).transpose(1, 2)
                   for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out[0](out.transpose(1, 2).reshape(b, n, c))


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner)

    def forward(self, x):
        # proj's two halves (value first) as two GEMMs rather than one and a chunk: GELU and product then run on
        # contiguous tensors, and the narrower GEMMs are faster on CPU (~8% for the GEGLU at 64–2048 tokens).
        (value_w, gate_w), (value_b, gate_b) = self.proj.weight.chunk(2), self.proj.bias.chunk(2)
        return F.linear(x, value_w, value_b) * F.gelu(F.linear(x, gate_w, gate_b))


class FeedForward(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.net = indexed({0: GEGLU(dim, 4 * dim), 2: nn.Linear(4 * dim, dim)})  # [GEGLU, Dropout, Linear]

    def forward(self, x):
        rows, dim = x.numel() // x.shape[-1], x.shape[-1]
        if x.device.type != "cpu" or rows > dim:
            return self.net["2"](self.net["0"](x))
        # Fewer tokens than features (the deepest levels of small latents): the same GEMMs turned round, weight on
        # the left and activations features × tokens. MKL runs that form ~30% faster on CPU there (64 tokens × 2,
        # 1280 features: 44 → 31 ms per block) and no slower up to rows == features; beyond, the usual form wins.
        (value_w, gate_w), (value_b, gate_b) = self.net["0"].proj.weight.chunk(2), self.net["0"].proj.bias.chunk(2)
        xt = x.reshape(rows, dim).t()
        h = torch.addmm(value_b[:, None], value_w, xt) * F.gelu(torch.addmm(gate_b[:, None], gate_w, xt))
        return torch.addmm(self.net["2"].bias[:, None], self.net["2"].weight, h).t().contiguous().view(x.shape)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int):
        super().__init__()
        self.attn1 = CrossAttention(dim, dim, heads)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x, context):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """GroupNorm → Linear proj_in on flattened tokens → blocks → Linear proj_out → residual. SD 1.x projects with
    1×1 convs before flattening and after unflattening instead (``linear=False``)."""

    def __init__(self, ch: int, depth: int, context_dim: int, heads: int, linear: bool = True):
        super().__init__()
        self.linear = linear
        self.norm = nn.GroupNorm(32, ch, eps=1e-6)
        self.proj_in = nn.Linear(ch, ch) if linear else Conv2d(ch, ch, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(ch, context_dim, heads) for _ in range(depth))
        self.proj_out = nn.Linear(ch, ch) if linear else Conv2d(ch, ch, 1)

    def forward(self, x, context):
        b, c, h, w = x.shape
        if self.linear:
            t = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))
        else:
            t = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        for block in self.transformer_blocks:
            t = block(t, context)
        # x first: the sum takes its (contiguous) layout. The other way round it comes out channels-last, and every
        # following conv would copy its weight into that layout (0.25 s per full-size call on CPU).
        if self.linear:
            return x + self.proj_out(t).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(t.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.op = Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = Conv2d(ch, ch, 3, padding=1)

    def forward(self, x, size=None):
        # Upsample to the matching skip's size so latents not divisible by 2^levels still work.
        return self.conv(F.interpolate(x, size=size, scale_factor=None if size else 2.0, mode="nearest"))


class TimestepEmbedSequential(nn.Sequential):
    """Passes each layer the inputs it takes: ResBlocks get emb, transformers get context."""

    def forward(self, x, emb, context, out_size=None):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, Upsample):
                x = layer(x, out_size)
            else:
                x = layer(x)
        return x


def _transformer(cfg: UNetConfig, ch: int, depth: int) -> SpatialTransformer:
    return SpatialTransformer(ch, depth, cfg.context_dim, cfg.heads(ch), cfg.use_linear_in_transformer)


def _level_block(cfg: UNetConfig, ch_in: int, ch_out: int, depth: int) -> list[nn.Module]:
    layers = [ResBlock(ch_in, ch_out, cfg.time_embed_dim)]
    if depth:
        layers.append(_transformer(cfg, ch_out, depth))
    return layers


def add_encoder(net: nn.Module, cfg: UNetConfig) -> list[int]:
    """Give ``net`` the UNet's embeddings, input blocks and middle block under the original names (the part a
    ControlNet copies); returns the channel count of each input block's output, the skips."""
    c, emb_ch = cfg.model_channels, cfg.time_embed_dim
    net.time_embed = nn.Sequential(nn.Linear(c, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
    if cfg.adm_in_channels:
        net.label_emb = nn.Sequential(nn.Sequential(
            nn.Linear(cfg.adm_in_channels, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch)))
    net.input_blocks = nn.ModuleList([TimestepEmbedSequential(Conv2d(cfg.in_channels, c, 3, padding=1))])
    skip_chs, ch = [c], c
    for level, (ch_out, depth) in enumerate(zip(cfg.channels, cfg.transformer_depth)):
        for _ in range(cfg.num_res_blocks):
            net.input_blocks.append(TimestepEmbedSequential(*_level_block(cfg, ch, ch_out, depth)))
            ch = ch_out
            skip_chs.append(ch)
        if level < len(cfg.channels) - 1:
            net.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
            skip_chs.append(ch)
    middle = [ResBlock(ch, ch, emb_ch)]
    if cfg.transformer_depth_middle:
        middle.append(_transformer(cfg, ch, cfg.transformer_depth_middle))
    net.middle_block = TimestepEmbedSequential(*middle, ResBlock(ch, ch, emb_ch))
    return skip_chs


def embedding(net: nn.Module, cfg: UNetConfig, timesteps: torch.Tensor, y: torch.Tensor | None,
              batch: int) -> torch.Tensor:
    """The timestep embedding (plus SDXL's vector y) that every ResBlock of ``net`` (add_encoder) takes."""
    dtype = net.dtype
    t_emb = timestep_embedding(timesteps.expand(batch), cfg.model_channels).to(dtype)
    if cfg.adm_in_channels:
        return net.time_embed(t_emb) + net.label_emb(y.to(dtype))
    return net.time_embed(t_emb)


class UNetModel(nn.Module):
    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.config = cfg
        skip_chs = add_encoder(self, cfg)
        ch = skip_chs[-1]
        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(cfg.channels))):
            ch_out, depth = cfg.channels[level], cfg.transformer_depth[level]
            for i in range(cfg.num_res_blocks + 1):
                layers = _level_block(cfg, ch + skip_chs.pop(), ch_out, depth)
                ch = ch_out
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), Conv2d(ch, cfg.out_channels, 3, padding=1))

    @property
    def dtype(self) -> torch.dtype:
        return self.out[2].weight.dtype

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                y: torch.Tensor | None = None, control=None) -> torch.Tensor:
        """x [B, 4, h, w], timesteps [B] (fractional allowed), context [B, T, context_dim], y [B, adm] (SDXL; None
        without a vector input) → the raw prediction (ε̂ or v̂). ``control``: a ControlNet's residuals
        (nodes.sdxl.controlnet.Residuals), one added to each skip and one to the middle block's output."""
        emb = embedding(self, self.config, timesteps, y, x.shape[0])
        h, context = x.to(self.dtype), context.to(self.dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        if control is not None:
            h = h + control.middle
            skips = [skip + residual for skip, residual in zip(skips, control.skips)]
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context,
                      out_size=skips[-1].shape[-2:] if skips else None)
        return self.out(h).type(x.dtype)
