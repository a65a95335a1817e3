"""The Multimodal Diffusion Transformer (Esser et al. 2024, "Scaling Rectified Flow Transformers", §4 and Fig. 2),
keys as in the original single file with ``model.diffusion_model.`` stripped (Stability AI's reference
``mmditx.MMDiTX``; ``../shared/reference/keys/sd3_medium.txt``).

The latent is cut into p×p patches, embedded and given a learned 2-D position table (``pos_embed``, a buffer for a
``pos_embed_max_size``² grid, centre-cropped to the latent's grid). Text tokens (``context``) are projected to the
same width. Every joint block keeps one set of weights per stream (``context_block``, ``x_block``): each stream is
modulated by adaLN-Zero from c = embed(t) + embed(pooled text), the two streams' queries, keys and values are
concatenated on the token axis (text first) for one attention, and each stream takes its part of the result
through its own projection and MLP. The last block's context stream is pre-only: it feeds the joint attention and
stops. A final adaLN layer and a linear map give p·p·C values per patch, unpatchified to the latent's shape.

Room for SD3.5 without a rewrite (``MMDiTConfig``): ``qk_norm`` (RMSNorm on each head's queries and keys, SD3.5) and
``x_self_attn_layers`` (MMDiT-X, SD3.5 medium: in those blocks the image stream also attends to itself alone, with
three more modulation vectors).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..sdxl.embeddings import timestep_embedding
from ..sdxl.unet import indexed

FREQUENCY_DIM = 256  # width of the sinusoidal timestep embedding


@dataclass(frozen=True)
class MMDiTConfig:
    depth: int  # joint blocks
    hidden_size: int  # 64 · heads in every released model (single files store no head count)
    num_heads: int
    patch_size: int = 2
    in_channels: int = 16
    out_channels: int = 16
    context_dim: int = 4096  # text token width (T5-XXL's; the CLIP states are zero-padded to it)
    pooled_dim: int = 2048  # CLIP-L ‖ CLIP-G pooled
    pos_embed_max_size: int = 192  # the position table's grid side, in patches
    mlp_ratio: float = 4.0
    qk_norm: bool = False  # SD3.5: RMSNorm on each head's q and k
    x_self_attn_layers: tuple[int, ...] = ()  # MMDiT-X: blocks whose image stream also attends to itself alone

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


# The elementwise steps below write into the tensor the step before just made (a LayerNorm's or a GEMM's output,
# used nowhere else): at SD3's widths each fresh activation is megabytes of new pages to fault in, which on a CPU
# costs more than the elementwise arithmetic (filling a fresh 50 MB tensor: 40 ms; a reused one: 9 ms).

def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """x·(1 + scale) + shift, per batch item; ``inplace`` overwrites x."""
    return torch.addcmul(shift[:, None], x, 1 + scale[:, None], out=x if inplace else None)


def gated(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x + gate·y (adaLN-Zero's gated residual), written over y."""
    return torch.addcmul(x, gate[:, None], y, out=y)


def heads_out(out: torch.Tensor) -> torch.Tensor:
    """[B, heads, L, head_dim] → contiguous [B, L, heads·head_dim], so the projection after it is one plain GEMM."""
    return out.transpose(1, 2).flatten(2)


class SelfAttention(nn.Module):
    """One stream's fused qkv projection (and output projection, except in a pre-only block)."""

    def __init__(self, dim: int, heads: int, qk_norm: bool, pre_only: bool = False):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        if not pre_only:
            self.proj = nn.Linear(dim, dim)
        if qk_norm:
            self.ln_q = nn.RMSNorm(dim // heads, eps=1e-6)
            self.ln_k = nn.RMSNorm(dim // heads, eps=1e-6)

    def qkv_heads(self, x: torch.Tensor, keys_only: bool = False) -> list[torch.Tensor]:
        """[q, k, v] (or [k, v]: a pre-only last block's queries are never used), each [B, heads, L, head_dim].
        Three GEMMs on row views of the fused weight rather than one: each output is a third of the size, small
        enough for the allocator to reuse (a fresh allocation above 32 MB is mmapped and page-faulted anew)."""
        b, n, c = x.shape
        weights, biases = self.qkv.weight.chunk(3), self.qkv.bias.chunk(3)
        parts = [F.linear(x, weights[i], biases[i]).view(b, n, self.heads, -1).transpose(1, 2)
                 for i in range(1 if keys_only else 0, 3)]
        if hasattr(self, "ln_q"):
            parts[-2] = self.ln_k(parts[-2])
            if not keys_only:
                parts[0] = self.ln_q(parts[0])
        return parts


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Multi-head attention on [B, heads, L, head_dim] inputs."""
    return F.scaled_dot_product_attention(q, k, v)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(torch.ops.aten.gelu_(self.fc1(x), approximate="tanh"))  # in place, as above


class DismantledBlock(nn.Module):
    """One stream of a joint block (the reference's name): adaLN-Zero modulation of a LayerNorm without affine
    parameters, then attention and MLP, each added back through a gate. The modulation vectors, in order: shift,
    scale, gate of the attention; shift, scale, gate of the MLP; and with ``self_attn`` shift, scale, gate of the
    second attention. A pre-only block has the attention's shift and scale alone."""

    def __init__(self, cfg: MMDiTConfig, pre_only: bool = False, self_attn: bool = False):
        super().__init__()
        h = cfg.hidden_size
        self.pre_only, self.self_attn = pre_only, self_attn
        self.norm1 = nn.LayerNorm(h, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(h, cfg.num_heads, cfg.qk_norm, pre_only)
        if self_attn:
            self.attn2 = SelfAttention(h, cfg.num_heads, cfg.qk_norm)
        if not pre_only:
            self.norm2 = nn.LayerNorm(h, elementwise_affine=False, eps=1e-6)
            self.mlp = Mlp(h, int(h * cfg.mlp_ratio))
        self.n_mod = 2 if pre_only else 9 if self_attn else 6
        self.adaLN_modulation = indexed({1: nn.Linear(h, self.n_mod * h)})  # the reference's [SiLU, Linear]

    def pre_attention(self, x: torch.Tensor, c: torch.Tensor):
        """The joint attention's [q, k, v] ([k, v] when pre-only), the self-attention's [q, k, v] or None, and what
        post_attention needs."""
        mod = self.adaLN_modulation["1"](F.silu(c)).chunk(self.n_mod, dim=1)
        normed = self.norm1(x)
        qkv2 = self.attn2.qkv_heads(modulate(normed, mod[6], mod[7])) if self.self_attn else None
        qkv = self.attn.qkv_heads(modulate(normed, mod[0], mod[1], inplace=True), keys_only=self.pre_only)
        return qkv, qkv2, (x, mod)

    def post_attention(self, attn: torch.Tensor, attn2: torch.Tensor | None, x: torch.Tensor, mod) -> torch.Tensor:
        """``attn`` (and ``attn2``) as [B, heads, L, head_dim]."""
        x = gated(x, mod[2], self.attn.proj(heads_out(attn)))
        if attn2 is not None:
            x = gated(x, mod[8], self.attn2.proj(heads_out(attn2)))
        return gated(x, mod[5], self.mlp(modulate(self.norm2(x), mod[3], mod[4], inplace=True)))


class JointBlock(nn.Module):
    def __init__(self, cfg: MMDiTConfig, index: int):
        super().__init__()
        self.context_block = DismantledBlock(cfg, pre_only=index == cfg.depth - 1)
        self.x_block = DismantledBlock(cfg, self_attn=index in cfg.x_self_attn_layers)

    def forward(self, context: torch.Tensor, x: torch.Tensor, c: torch.Tensor):
        """One attention over the text tokens followed by the image tokens; each stream takes its rows back. A
        pre-only context stream asks no queries, so only the image rows are computed."""
        context_qkv, _, context_state = self.context_block.pre_attention(context, c)
        (xq, xk, xv), x_self, x_state = self.x_block.pre_attention(x, c)
        k, v = torch.cat([context_qkv[-2], xk], dim=2), torch.cat([context_qkv[-1], xv], dim=2)
        x_self = None if x_self is None else attention(*x_self)
        if self.context_block.pre_only:
            return None, self.x_block.post_attention(attention(xq, k, v), x_self, *x_state)
        n = context.shape[1]
        joint = attention(torch.cat([context_qkv[0], xq], dim=2), k, v)
        x = self.x_block.post_attention(joint[:, :, n:], x_self, *x_state)
        return self.context_block.post_attention(joint[:, :, :n], None, *context_state), x


class PatchEmbed(nn.Module):
    def __init__(self, cfg: MMDiTConfig):
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_channels, cfg.hidden_size, cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x):
        # tokens-major and contiguous: left as the convolution's transposed view, every later elementwise op and
        # GEMM on the image stream would read strided memory (or copy it first)
        return self.proj(x).flatten(2).transpose(1, 2).contiguous()


class EmbedderMLP(nn.Module):
    """The reference's ``mlp = [Linear, SiLU, Linear]`` (timestep and pooled-text embedders)."""

    def __init__(self, dim_in: int, dim: int):
        super().__init__()
        self.mlp = indexed({0: nn.Linear(dim_in, dim), 2: nn.Linear(dim, dim)})

    def forward(self, x):
        return self.mlp["2"](F.silu(self.mlp["0"](x)))


class FinalLayer(nn.Module):
    def __init__(self, cfg: MMDiTConfig):
        super().__init__()
        h, p = cfg.hidden_size, cfg.patch_size
        self.norm_final = nn.LayerNorm(h, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(h, p * p * cfg.out_channels)
        self.adaLN_modulation = indexed({1: nn.Linear(h, 2 * h)})

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation["1"](F.silu(c)).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale, inplace=True))


class MMDiT(nn.Module):
    """``forward(x [B, C, H, W], t [B] (σ·1000), context [B, T, context_dim], y [B, pooled_dim])`` → the velocity,
    shaped like x. A side that is not a multiple of the patch size is padded (circularly, right and bottom, as
    ComfyUI does) and the output cropped back."""

    def __init__(self, cfg: MMDiTConfig):
        super().__init__()
        self.config = cfg
        h = cfg.hidden_size
        self.x_embedder = PatchEmbed(cfg)
        self.register_buffer("pos_embed", torch.zeros(1, cfg.pos_embed_max_size ** 2, h))
        self.t_embedder = EmbedderMLP(FREQUENCY_DIM, h)
        self.y_embedder = EmbedderMLP(cfg.pooled_dim, h)
        self.context_embedder = nn.Linear(cfg.context_dim, h)
        self.joint_blocks = nn.ModuleList(JointBlock(cfg, i) for i in range(cfg.depth))
        self.final_layer = FinalLayer(cfg)

    def cropped_pos_embed(self, rows: int, cols: int) -> torch.Tensor:
        """The centre rows × cols of the position table, as [1, rows·cols, hidden]."""
        side = self.config.pos_embed_max_size
        if rows > side or cols > side:
            patch = self.config.patch_size
            raise ValueError(f"MMDiT: a latent of {rows * patch}×{cols * patch} is larger than its position table "
                             f"allows ({side * patch}×{side * patch} latent pixels)")
        top, left = (side - rows) // 2, (side - cols) // 2
        grid = self.pos_embed.view(1, side, side, -1)
        return grid[:, top:top + rows, left:left + cols].reshape(1, rows * cols, -1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        p = self.config.patch_size
        x = F.pad(x, (0, -width % p, 0, -height % p), mode="circular")
        rows, cols = x.shape[-2] // p, x.shape[-1] // p
        x = self.x_embedder(x) + self.cropped_pos_embed(rows, cols)
        dtype = x.dtype
        c = self.t_embedder(timestep_embedding(t, FREQUENCY_DIM).to(dtype)) + self.y_embedder(y)
        context = self.context_embedder(context)
        for block in self.joint_blocks:
            context, x = block(context, x, c)
        x = self.final_layer(x, c)
        out = x.view(x.shape[0], rows, cols, p, p, -1).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(x.shape[0], -1, rows * p, cols * p)[:, :, :height, :width]


SD3_MEDIUM = MMDiTConfig(depth=24, hidden_size=1536, num_heads=24)


def mmdit_config(shapes: dict[str, tuple]) -> MMDiTConfig:
    """The config of an original-layout MMDiT from its tensor shapes (prefix stripped). Heads are 64 channels wide
    in every released model: the weights do not say."""
    hidden, in_channels, patch, _ = shapes["x_embedder.proj.weight"]
    depth = len({k.split(".")[1] for k in shapes if k.startswith("joint_blocks.")})
    return MMDiTConfig(
        depth=depth, hidden_size=hidden, num_heads=hidden // 64, patch_size=patch, in_channels=in_channels,
        out_channels=shapes["final_layer.linear.weight"][0] // patch ** 2,
        context_dim=shapes["context_embedder.weight"][1], pooled_dim=shapes["y_embedder.mlp.0.weight"][1],
        pos_embed_max_size=math.isqrt(shapes["pos_embed"][1]),
        mlp_ratio=shapes["joint_blocks.0.x_block.mlp.fc1.weight"][0] / hidden,
        qk_norm="joint_blocks.0.x_block.attn.ln_q.weight" in shapes,
        x_self_attn_layers=tuple(sorted({int(k.split(".")[1]) for k in shapes if ".x_block.attn2." in k})))
