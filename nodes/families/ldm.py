"""What SD 1.x, SD 2.x and SDXL share: the latent-diffusion UNet and the KL-f8 VAE, in the original single-file
layout (CompVis / sgm ``LatentDiffusion``: ``model.diffusion_model.``, ``first_stage_model.``, the text encoders
under the family's prefixes) and in diffusers folders (unet/, vae/, text_encoder*/). ``LDMFamily`` loads both;
a family module says which text encoders it has, how its heads are counted and which prediction type it uses.

Configs are read from tensor shapes (single files) or config.json (diffusers); the diffusers ↔ original key maps
are sdxl.md §13.1 and §13.3.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import torch

from ..latent_format import LatentFormat
from ..lora import Target
from ..sampling.schedules import DiscreteEps
from ..sdxl.configs import FOURIER_DIM, SDXL_LATENT, UNetConfig, VAEConfig
from ..sdxl.meta import empty_modules
from ..sdxl.text import lora_weight_names
from ..sdxl.unet import UNetModel
from ..sdxl.vae import AutoencoderKL
from ..weights import (CheckpointError, UnsupportedCheckpoint, build, default_dtype, read_config, read_tensors,
                       weights_file)
from . import Checkpoint, Family

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
# Training leftovers some single files carry; never needed for inference.
IGNORED_PREFIXES = ("model_ema.", "denoiser.")


def ldm_extras(num_timesteps: int = 1000, linear_start: float = 0.00085, linear_end: float = 0.012) -> dict:
    """What CompVis ``LatentDiffusion`` files (SD 1.x, 2.x) carry besides the weights, never needed for inference:
    the DDPM schedule buffers ``register_schedule`` stores (Ho et al. 2020, eqs. 6–7; the sampler computes its own
    schedule, nodes.sampling.schedules) and the EMA bookkeeping scalars. Real values, so the demo files have the
    real layout."""
    betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, num_timesteps, dtype=torch.float64) ** 2
    alphas = torch.cumprod(1 - betas, 0)
    prev = torch.cat([alphas.new_ones(1), alphas[:-1]])
    posterior = betas * (1 - prev) / (1 - alphas)
    schedule = {
        "betas": betas, "alphas_cumprod": alphas, "alphas_cumprod_prev": prev,
        "sqrt_alphas_cumprod": alphas.sqrt(), "sqrt_one_minus_alphas_cumprod": (1 - alphas).sqrt(),
        "log_one_minus_alphas_cumprod": (1 - alphas).log(), "sqrt_recip_alphas_cumprod": (1 / alphas).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1 / alphas - 1).sqrt(), "posterior_variance": posterior,
        "posterior_log_variance_clipped": posterior.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * prev.sqrt() / (1 - alphas),
        "posterior_mean_coef2": (1 - prev) * (1 - betas).sqrt() / (1 - alphas),
    }
    return {**{k: v.float() for k, v in schedule.items()}, "model_ema.decay": torch.tensor(0.9999),
            "model_ema.num_updates": torch.tensor(0, dtype=torch.int32)}


# ---- config inference from shapes -------------------------------------------------------------------------

def _count(shapes: dict, prefix: str) -> int:
    """Number of consecutive integer children ``prefix{N}.`` present."""
    children = {k[len(prefix):].split(".", 1)[0] for k in shapes if k.startswith(prefix)}
    n = 0
    while str(n) in children:
        n += 1
    return n


def infer_unet_config(shapes: dict, num_head_channels: int = 64, num_heads: int = 0) -> UNetConfig:
    """UNet config from original-layout UNet shapes (prefix stripped), like sdxl.md §11.2; the encoder's alone
    (a ControlNet's) give the output channels of the input. Head counts are not in the weights: the family's
    convention comes in as ``num_head_channels`` or a fixed ``num_heads``."""
    conv_in = shapes["input_blocks.0.0.weight"]
    c = conv_in[0]
    mults, depths, level_blocks = [], [], []
    blocks_in_level = 0
    for i in range(1, _count(shapes, "input_blocks.")):
        if f"input_blocks.{i}.0.op.weight" in shapes:
            level_blocks.append(blocks_in_level)
            blocks_in_level = 0
            continue
        if blocks_in_level == 0:
            mults.append(shapes[f"input_blocks.{i}.0.out_layers.3.weight"][0] // c)
            depths.append(_count(shapes, f"input_blocks.{i}.1.transformer_blocks."))
        blocks_in_level += 1
    level_blocks.append(blocks_in_level)
    if len(set(level_blocks)) != 1:
        raise CheckpointError(f"UNet levels have different block counts {level_blocks}")
    ctx = next((v[1] for k, v in shapes.items() if k.endswith("attn2.to_k.weight")), 0)
    proj_in = next((v for k, v in shapes.items() if k.endswith(".proj_in.weight")), ())
    return UNetConfig(
        model_channels=c, channel_mult=tuple(mults), transformer_depth=tuple(depths),
        transformer_depth_middle=_count(shapes, "middle_block.1.transformer_blocks."),
        context_dim=ctx, adm_in_channels=shapes.get("label_emb.0.0.weight", (0, 0))[1], num_res_blocks=level_blocks[0],
        num_head_channels=num_head_channels, in_channels=conv_in[1],
        out_channels=shapes["out.2.weight"][0] if "out.2.weight" in shapes else conv_in[1],
        num_heads=num_heads, use_linear_in_transformer=len(proj_in) != 4)


def infer_vae_config(shapes: dict, latent: LatentFormat = SDXL_LATENT) -> VAEConfig:
    """VAE config from original-layout VAE shapes (prefix stripped); the latent scale and shift are the family's."""
    ch = shapes["encoder.conv_in.weight"][0]
    levels = _count(shapes, "encoder.down.")
    mult = tuple(shapes[f"encoder.down.{i}.block.0.conv1.weight"][0] // ch for i in range(levels))
    return VAEConfig(ch=ch, ch_mult=mult, num_res_blocks=_count(shapes, "encoder.down.0.block."),
                     z_channels=shapes["decoder.conv_in.weight"][1], in_channels=shapes["encoder.conv_in.weight"][1],
                     out_channels=shapes["decoder.conv_out.weight"][0], scaling_factor=latent.scale_factor,
                     shift_factor=latent.shift_factor, use_quant_conv="quant_conv.weight" in shapes)


def unet_structure_from_diffusers_shapes(shapes: dict) -> UNetConfig:
    """The structure of a diffusers-layout UNet from its tensor shapes (a ``diffusion_pytorch_model.safetensors``
    without its config.json): enough to name its tensors in the original layout. The head count is not in the
    weights: the family reads it from those (``LDMFamily.unet_config``)."""
    levels = _count(shapes, "down_blocks.")
    out = [shapes[f"down_blocks.{i}.resnets.0.conv1.weight"][0] for i in range(levels)]
    proj_in = next((v for k, v in shapes.items() if k.endswith(".proj_in.weight")), ())
    return UNetConfig(
        model_channels=out[0], channel_mult=tuple(c // out[0] for c in out),
        transformer_depth=tuple(_count(shapes, f"down_blocks.{i}.attentions.0.transformer_blocks.")
                                for i in range(levels)),
        transformer_depth_middle=_count(shapes, "mid_block.attentions.0.transformer_blocks."),
        context_dim=next((v[1] for k, v in shapes.items() if k.endswith("attn2.to_k.weight")), 0),
        adm_in_channels=shapes.get("add_embedding.linear_1.weight", (0, 0))[1],
        num_res_blocks=_count(shapes, "down_blocks.0.resnets."), in_channels=shapes["conv_in.weight"][1],
        out_channels=shapes["conv_out.weight"][0], use_linear_in_transformer=len(proj_in) != 4)


def _vae_config_from_diffusers_shapes(shapes: dict, latent: LatentFormat) -> VAEConfig:
    ch = shapes["encoder.conv_in.weight"][0]
    levels = _count(shapes, "encoder.down_blocks.")
    return VAEConfig(ch=ch, ch_mult=tuple(shapes[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"][0] // ch
                                          for i in range(levels)),
                     num_res_blocks=_count(shapes, "encoder.down_blocks.0.resnets."),
                     z_channels=shapes["decoder.conv_in.weight"][1], scaling_factor=latent.scale_factor,
                     shift_factor=latent.shift_factor, use_quant_conv="quant_conv.weight" in shapes)


# ---- diffusers ↔ original key maps (sdxl.md §13.1, §13.3) ------------------------------------------------

_RESNET_UNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}


@functools.lru_cache(maxsize=8)
def unet_diffusers_names(cfg: UNetConfig) -> dict[str, str]:
    """Original UNet key → diffusers ``UNet2DConditionModel`` key, for every tensor of ``cfg`` (cached: read only)."""
    prefixes = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
                "label_emb.0.0": "add_embedding.linear_1", "label_emb.0.2": "add_embedding.linear_2",
                "input_blocks.0.0": "conv_in", "out.0": "conv_norm_out", "out.2": "conv_out",
                "middle_block.0": "mid_block.resnets.0"}
    if cfg.transformer_depth_middle:
        prefixes.update({"middle_block.1": "mid_block.attentions.0", "middle_block.2": "mid_block.resnets.1"})
    else:
        prefixes["middle_block.1"] = "mid_block.resnets.1"
    n, L = len(cfg.channel_mult), cfg.num_res_blocks
    for i in range(n):
        for j in range(L):
            b = 1 + i * (L + 1) + j
            prefixes[f"input_blocks.{b}.0"] = f"down_blocks.{i}.resnets.{j}"
            prefixes[f"input_blocks.{b}.1"] = f"down_blocks.{i}.attentions.{j}"
        if i < n - 1:
            prefixes[f"input_blocks.{(i + 1) * (L + 1)}.0.op"] = f"down_blocks.{i}.downsamplers.0.conv"
    for u in range(n):
        for j in range(L + 1):
            b = u * (L + 1) + j
            prefixes[f"output_blocks.{b}.0"] = f"up_blocks.{u}.resnets.{j}"
            prefixes[f"output_blocks.{b}.1"] = f"up_blocks.{u}.attentions.{j}"
        if u < n - 1:
            slot = 2 if cfg.transformer_depth[n - 1 - u] else 1
            prefixes[f"output_blocks.{u * (L + 1) + L}.{slot}.conv"] = f"up_blocks.{u}.upsamplers.0.conv"
    with empty_modules():
        keys = UNetModel(cfg).state_dict().keys()
    return {k: _rename(k, prefixes, _RESNET_UNET) for k in keys}


_RESNET_VAE = {"nin_shortcut": "conv_shortcut"}


def vae_diffusers_names(cfg: VAEConfig) -> dict[str, str]:
    """Original VAE key → diffusers ``AutoencoderKL`` key."""
    n = len(cfg.ch_mult)
    prefixes = {}
    for part in ("encoder", "decoder"):
        prefixes.update({f"{part}.mid.block_1": f"{part}.mid_block.resnets.0",
                         f"{part}.mid.block_2": f"{part}.mid_block.resnets.1",
                         f"{part}.mid.attn_1.norm": f"{part}.mid_block.attentions.0.group_norm",
                         f"{part}.mid.attn_1.q": f"{part}.mid_block.attentions.0.to_q",
                         f"{part}.mid.attn_1.k": f"{part}.mid_block.attentions.0.to_k",
                         f"{part}.mid.attn_1.v": f"{part}.mid_block.attentions.0.to_v",
                         f"{part}.mid.attn_1.proj_out": f"{part}.mid_block.attentions.0.to_out.0",
                         f"{part}.norm_out": f"{part}.conv_norm_out"})
    for i in range(n):
        for j in range(cfg.num_res_blocks + 1):
            prefixes[f"encoder.down.{i}.block.{j}"] = f"encoder.down_blocks.{i}.resnets.{j}"
            prefixes[f"decoder.up.{n - 1 - i}.block.{j}"] = f"decoder.up_blocks.{i}.resnets.{j}"
        prefixes[f"encoder.down.{i}.downsample.conv"] = f"encoder.down_blocks.{i}.downsamplers.0.conv"
        prefixes[f"decoder.up.{n - 1 - i}.upsample.conv"] = f"decoder.up_blocks.{i}.upsamplers.0.conv"
    with empty_modules():
        keys = AutoencoderKL(cfg).state_dict().keys()
    return {k: _rename(k, prefixes, _RESNET_VAE) for k in keys}


def _rename(key: str, prefixes: dict[str, str], resnet_names: dict[str, str]) -> str:
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:cut])
        if head in prefixes:
            sub = ".".join(parts[cut:-1])  # resnet sub-layers are renamed, everything else keeps its name
            return ".".join(p for p in (prefixes[head], resnet_names.get(sub, sub), parts[-1]) if p)
    return key  # same name in both (e.g. quant_conv, encoder.conv_in)


def _vae_attention_to_conv(state: dict[str, torch.Tensor]) -> None:
    """diffusers stores the VAE mid-attention projections as Linear [C, C]; the original as 1×1 convs."""
    for k, v in state.items():
        if ".mid.attn_1." in k and k.endswith(".weight") and v.ndim == 2:
            state[k] = v[:, :, None, None]


# ---- LoRA names (nodes.lora) ------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def unet_lora_keys(cfg: UNetConfig) -> dict[str, Target]:
    """Every name LoRA files give a UNet weight → its parameter in ours (original layout): kohya-ss's on the sgm
    UNet it trains SDXL on (``lora_unet_input_blocks_4_1_…``) and on diffusers' UNet it trains SD 1.x/2.x on
    (``lora_unet_down_blocks_1_attentions_0_…``), diffusers/PEFT's (``unet.down_blocks.1.attentions.0.…``) and the
    single file's own (``diffusion_model.input_blocks.4.1.…``)."""
    keys = {}
    for ours, theirs in unet_diffusers_names(cfg).items():
        if ours.endswith(".weight"):
            o, d, target = ours[:-len(".weight")], theirs[:-len(".weight")], Target(0, ours)
            for name in (f"lora_unet_{o.replace('.', '_')}", f"lora_unet_{d.replace('.', '_')}", f"unet.{d}",
                         f"diffusion_model.{o}"):
                keys[name] = target
    return keys


def text_lora_keys(towers: list, prefixes) -> dict[str, Target]:
    """Every name LoRA files give a text tower's weights → where it is in ours; ``prefixes`` has, per tower in order,
    the kohya-ss, diffusers/PEFT and single-file name prefixes (``lora_te1_``, ``text_encoder.``, the checkpoint's;
    None where the checkpoint names the tower otherwise than ours). Towers beyond ``prefixes`` take no LoRA."""
    keys = {}
    for index, (tower, (kohya, dotted, single)) in enumerate(zip(towers, prefixes)):
        for name, (weight, rows, transposed) in lora_weight_names(tower).items():
            keys[kohya + name.replace(".", "_")] = keys[dotted + name] = Target(index, weight, rows, transposed)
        for weight, value in tower.named_parameters() if single is not None else ():
            if weight.endswith(".weight") and value.ndim >= 2:
                keys[single + weight[:-len(".weight")]] = Target(index, weight)
    return keys


# ---- diffusers configs ------------------------------------------------------------------------------------

def unet_config_from_diffusers(conf: dict) -> UNetConfig:
    """UNetConfig from a diffusers ``unet/config.json``; its ``attention_head_dim`` is the head count per level
    (the same count everywhere for SD 1.x, 64-channel heads for SD 2.x and SDXL)."""
    boc = list(conf["block_out_channels"])
    n = len(boc)
    per_level = lambda v: list(v) if isinstance(v, (list, tuple)) else [v] * n  # noqa: E731
    tlpb = per_level(conf.get("transformer_layers_per_block", 1))
    heads = per_level(conf.get("num_attention_heads") or conf["attention_head_dim"])
    attn = [t.startswith("CrossAttn") for t in conf["down_block_types"]]
    depths = tuple(tlpb[i] if attn[i] else 0 for i in range(n))
    levels = [i for i in range(n) if attn[i]] + [n - 1]  # the middle block works at the last level's width
    head_channels, head_counts = {boc[i] // heads[i] for i in levels}, {heads[i] for i in levels}
    if len(head_channels) == 1:
        head_kw = {"num_head_channels": head_channels.pop()}
    elif len(head_counts) == 1:
        head_kw = {"num_heads": head_counts.pop()}
    else:
        raise UnsupportedCheckpoint(f"UNet config has different channels per head across levels {head_channels}")
    addition = conf.get("addition_embed_type")
    if conf.get("class_embed_type") or addition not in (None, "text_time") or \
            addition and conf.get("addition_time_embed_dim", FOURIER_DIM) != FOURIER_DIM:  # null when not text_time
        raise UnsupportedCheckpoint("UNet config has a class or addition embedding other than SDXL's (text_time, "
                                    f"addition_time_embed_dim {FOURIER_DIM}); not SD 1.x, 2.x or SDXL")
    mid_type = conf.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    return UNetConfig(
        model_channels=boc[0], channel_mult=tuple(c // boc[0] for c in boc), transformer_depth=depths,
        transformer_depth_middle=tlpb[-1] if mid_type == "UNetMidBlock2DCrossAttn" else 0,
        context_dim=conf["cross_attention_dim"],
        adm_in_channels=conf["projection_class_embeddings_input_dim"] if addition else 0,
        num_res_blocks=conf.get("layers_per_block", 2), in_channels=conf.get("in_channels", 4),
        out_channels=conf.get("out_channels", 4),
        use_linear_in_transformer=conf.get("use_linear_projection", False), **head_kw)


def vae_config_from_diffusers(conf: dict) -> VAEConfig:
    boc = list(conf["block_out_channels"])
    return VAEConfig(ch=boc[0], ch_mult=tuple(c // boc[0] for c in boc), num_res_blocks=conf.get("layers_per_block", 1),
                     z_channels=conf.get("latent_channels", 4), in_channels=conf.get("in_channels", 3),
                     out_channels=conf.get("out_channels", 3), scaling_factor=conf.get("scaling_factor", 0.13025),
                     shift_factor=conf.get("shift_factor") or 0.0, use_quant_conv=conf.get("use_quant_conv", True))


def _from_diffusers(path: Path, names: dict[str, str], dtype, device) -> dict[str, torch.Tensor]:
    inverse = {d: o for o, d in names.items()}
    # older diffusers VAEs name the attention projections query/key/value/proj_attn
    legacy = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}

    def rename(k):
        if k in inverse:
            return inverse[k]
        for old, new in legacy.items():
            k = k.replace(old, new)
        return inverse.get(k, "unexpected:" + k)

    return read_tensors(path, rename, dtype, device)


# ---- loading ----------------------------------------------------------------------------------------------

def load_diffusers_unet(folder: Path, device="cpu", dtype=None) -> tuple[UNetModel, UNetConfig]:
    """A diffusers ``unet/`` folder (config.json + safetensors) → our UNet in the original layout."""
    folder, dtype = Path(folder), dtype or default_dtype(device)
    cfg = unet_config_from_diffusers(read_config(folder))
    file = weights_file(folder)
    state = _from_diffusers(file, unet_diffusers_names(cfg), dtype, device)
    return build(UNetModel, cfg, state, "UNet", file), cfg


def load_diffusers_vae(folder: Path, dtype, device) -> AutoencoderKL:
    cfg = vae_config_from_diffusers(read_config(folder))
    file = weights_file(folder)
    state = _from_diffusers(file, vae_diffusers_names(cfg), dtype, device)
    _vae_attention_to_conv(state)
    return build(AutoencoderKL, cfg, state, "VAE", file)


def load_vae_file(path: Path, shapes: dict, latent: LatentFormat, dtype, device) -> AutoencoderKL:
    """A standalone VAE file: original layout with or without ``first_stage_model.``, or diffusers layout without
    its config (the config then comes from the shapes). The latent scale and shift cannot be read from the weights."""
    prefix = VAE_PREFIX if any(k.startswith(VAE_PREFIX) for k in shapes) else ""
    own = {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}
    if "encoder.down_blocks.0.resnets.0.conv1.weight" in own:
        cfg = _vae_config_from_diffusers_shapes(own, latent)
        state = _from_diffusers(path, vae_diffusers_names(cfg), dtype, device)
        _vae_attention_to_conv(state)
        return build(AutoencoderKL, cfg, state, "VAE", path)
    cfg = infer_vae_config(own, latent)
    state = read_tensors(path, lambda k: k[len(prefix):] if k.startswith(prefix) else None, dtype, device)
    if prefix == "":
        # tolerate a few extra bookkeeping tensors some VAE files carry (e.g. model_ema.*)
        state = {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}
    return build(AutoencoderKL, cfg, state, "VAE", path)


def require_plain_unet(shapes: dict, title: str, prefix: str = UNET_PREFIX) -> None:
    """The UNet takes the 4 latent channels alone: inpainting (9) and other variants are not supported yet."""
    conv_in = shapes[prefix + "input_blocks.0.0.weight"]
    if conv_in[1] != 4:
        variant = "an inpainting" if conv_in[1] == 9 else f"a {conv_in[1]}-channel-input"
        raise UnsupportedCheckpoint(f"found {variant} {title} UNet (input_blocks.0.0.weight {list(conv_in)}); "
                                    f"only 4-channel {title} checkpoints are supported")


def is_sd_unet(unet: dict, title: str, linear: bool) -> bool:
    """Whether original-layout UNet shapes (no prefix) are an SD 1.x UNet (1×1-conv projections, ``linear`` False)
    or an SD 2.x one (linear projections): no vector input. One with other input channels raises, as
    ``require_plain_unet``."""
    proj_in = next((v for k, v in unet.items() if k.endswith(".proj_in.weight")), None)
    if "label_emb.0.0.weight" in unet or proj_in is None or (len(proj_in) == 2) != linear:
        return False
    require_plain_unet(unet, title, prefix="")
    return True


def strip_prefix(prefix: str):
    """A read_tensors rename: the keys under ``prefix``, without it."""
    return lambda k: k[len(prefix):] if k.startswith(prefix) else None


def unet_file_layout(shapes: dict) -> tuple[Callable[[str], str | None], dict] | None:
    """How a file holding a UNet names it: (read_tensors rename from the file's names to the original layout's
    without prefix, the UNet's shapes under those names). The original layout with ``model.diffusion_model.`` (a
    UNet-only file, or a whole checkpoint) or without, and diffusers' ``UNet2DConditionModel`` layout; None for a
    file holding no UNet."""
    if UNET_PREFIX + "input_blocks.0.0.weight" in shapes:
        return strip_prefix(UNET_PREFIX), {k[len(UNET_PREFIX):]: v for k, v in shapes.items()
                                           if k.startswith(UNET_PREFIX)}
    if "input_blocks.0.0.weight" in shapes:
        return (lambda k: k), dict(shapes)
    if "conv_in.weight" in shapes and "down_blocks.0.resnets.0.conv1.weight" in shapes:
        names = unet_diffusers_names(unet_structure_from_diffusers_shapes(shapes))
        original = {d: o for o, d in names.items()}
        return (lambda k: original.get(k, "unexpected:" + k)), {o: shapes[d] for o, d in names.items() if d in shapes}
    return None


class LDMFamily(Family):
    """A family of UNet checkpoints. Subclasses set the class attributes and ``text_encoders`` (and override
    ``unet_config`` / ``sampling_for`` where their convention differs)."""
    text_prefixes: dict[str, str]  # single-file prefix → the name text_encoders expects ("clip_l.")
    text_folders: tuple[str, ...]  # diffusers subfolders holding its text encoders
    num_head_channels = 64  # single files do not store head counts …
    num_heads = 0  # … or a fixed count per layer (SD 1.x: 8)
    extra_tensors: frozenset[str] = frozenset()  # top-level tensors its single files carry (ldm_extras)

    # per tower of its CLIP (towers() order): the kohya-ss, diffusers/PEFT and single-file prefixes of LoRA names
    lora_towers: tuple[tuple[str, str, str], ...] = ()

    @property
    def lora_text_prefixes(self) -> tuple[str, ...]:
        return tuple(p for tower in self.lora_towers for p in tower)

    def lora_model_keys(self, model):
        return unet_lora_keys(model.module.config)

    def lora_clip_keys(self, clip):
        return text_lora_keys(clip.towers(), self.lora_towers)

    def text_encoders(self, state: dict[str, torch.Tensor], layout: str, dtype, device):
        """The CLIP value from the text towers' tensors: layout "original" (keys renamed by ``text_prefixes``) or
        "diffusers" (``<subfolder>.<HF keys>``). Raises KeyError / ValueError when they do not fit."""
        raise NotImplementedError

    def unet_config(self, shapes: dict) -> UNetConfig:
        return infer_unet_config(shapes, self.num_head_channels, self.num_heads)

    def sampling_for(self, path: Path, unet: dict, rename: Callable[[str], str | None]):
        """The prediction type of a single file (eps unless the family can tell otherwise), from its UNet's shapes in
        the original layout without prefix, which ``rename`` gives the file's names."""
        return DiscreteEps()

    def claims_unet(self, unet: dict) -> bool:
        """Whether a UNet with these original-layout shapes (no prefix) is this family's, text encoders unseen."""
        return False

    def claims_diffusion_model(self, shapes):
        layout = unet_file_layout(shapes)
        return layout is not None and self.claims_unet(layout[1])

    def load_diffusion_model(self, path, shapes, device, dtype, folder=None):
        if folder is not None:
            unet, cfg = load_diffusers_unet(folder, device, dtype)
            # a pipeline's unet/ folder: the scheduler beside it says the prediction type
            return Checkpoint(self.name, unet, cfg, None, None, folder, dtype, self.sampling_for_folder(folder.parent))
        rename, own = unet_file_layout(shapes)
        cfg = self.unet_config(own)
        unet = build(UNetModel, cfg, read_tensors(path, rename, dtype, device), "UNet", path)
        return Checkpoint(self.name, unet, cfg, None, None, path, dtype, self.sampling_for(path, own, rename))

    def sampling_for_folder(self, folder: Path):
        return DiscreteEps()

    def _text(self, state, layout, dtype, device, path):
        try:
            return self.text_encoders(state, layout, dtype, device)
        except (KeyError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path}: text encoders do not load — {e}") from e

    def load(self, path: Path, shapes: dict, device, dtype, with_text: bool) -> Checkpoint:
        unknown = [k for k in shapes if not k.startswith((UNET_PREFIX, VAE_PREFIX, *self.text_prefixes,
                                                          *IGNORED_PREFIXES)) and k not in self.extra_tensors]
        if unknown:
            raise CheckpointError(f"{path}: {len(unknown)} tensors outside the {self.title} components, "
                                  f"e.g. {unknown[:3]}")
        unet_shapes = {k[len(UNET_PREFIX):]: v for k, v in shapes.items() if k.startswith(UNET_PREFIX)}
        unet_cfg = self.unet_config(unet_shapes)
        vae_cfg = infer_vae_config({k[len(VAE_PREFIX):]: v for k, v in shapes.items() if k.startswith(VAE_PREFIX)},
                                   self.latent_format)
        unet = build(UNetModel, unet_cfg, read_tensors(path, strip_prefix(UNET_PREFIX), dtype, device), "UNet", path)
        vae = build(AutoencoderKL, vae_cfg, read_tensors(path, strip_prefix(VAE_PREFIX), dtype, device), "VAE", path)

        def text_name(k):
            return next((new + k[len(old):] for old, new in self.text_prefixes.items() if k.startswith(old)), None)

        text = self._text(read_tensors(path, text_name, dtype, device), "original", dtype, device, path) \
            if with_text else None
        return Checkpoint(self.name, unet, unet_cfg, vae, text, path, dtype,
                          self.sampling_for(path, unet_shapes, strip_prefix(UNET_PREFIX)))

    def load_folder(self, folder: Path, device, dtype, with_text: bool) -> Checkpoint:
        unet, cfg = load_diffusers_unet(folder / "unet", device, dtype)
        vae = load_diffusers_vae(folder / "vae", dtype, device)
        text = None
        if with_text:
            state = {}
            for sub in self.text_folders:
                prefix = sub + "."
                state.update(read_tensors(weights_file(folder / sub), lambda k, p=prefix: p + k, dtype, device))
            text = self._text(state, "diffusers", dtype, device, folder)
        return Checkpoint(self.name, unet, cfg, vae, text, folder, dtype, self.sampling_for_folder(folder))

    def single_file_state(self, unet: UNetModel, vae: AutoencoderKL, text: dict[str, dict]) -> dict[str, torch.Tensor]:
        """A single file's tensors (the demo writers'): UNet and VAE under their prefixes, each text tower's state
        ``text[prefix]`` under its prefix, and the top-level extras the family's files carry."""
        state = {UNET_PREFIX + k: v for k, v in unet.state_dict().items()}
        state.update({VAE_PREFIX + k: v for k, v in vae.state_dict().items()})
        for prefix, tower in text.items():
            state.update({prefix + k: v for k, v in tower.items()})
        if self.extra_tensors:
            state.update(ldm_extras())
        return state

    def full_size_layout(self, unet: UNetConfig, vae: VAEConfig, text: dict[str, tuple]) -> dict[str, tuple[int, ...]]:
        """Every tensor name and shape of a full-size single file: UNet and VAE built on meta, the text towers'
        ``text`` shapes, and the top-level extras the family's files carry."""
        with torch.device("meta"):
            parts = ((UNET_PREFIX, UNetModel(unet)), (VAE_PREFIX, AutoencoderKL(vae)))
            shapes = {prefix + k: tuple(v.shape) for prefix, module in parts for k, v in module.state_dict().items()}
        shapes.update(text)
        if self.extra_tensors:
            shapes.update({k: tuple(v.shape) for k, v in ldm_extras().items()})
        return shapes

    def demo_lora(self, path: Path, unet: UNetConfig, towers: list, names: str, seed: int, what: str) -> Path:
        """A tiny random LoRA for a demo checkpoint with UNet ``unet`` and text ``towers`` (built on meta; none for a
        UNet-only LoRA), on the layers LoRA trainers adapt (the UNet's transformer blocks and projections, the text
        encoders' linear layers). ``names``: "kohya-sgm" / "kohya-diffusers" (kohya-ss names on the sgm or the
        diffusers UNet, with alpha) or "peft" (diffusers' ``lora_A``/``lora_B``)."""
        from .. import demo  # demo imports this module

        with torch.device("meta"):
            shapes = {k: v.shape for k, v in UNetModel(unet).state_dict().items()}
        chosen = {}
        for ours, theirs in unet_diffusers_names(unet).items():
            if ours.endswith(".weight") and len(shapes[ours]) >= 2 and \
                    any(part in ours for part in (".transformer_blocks.", ".proj_in.", ".proj_out.")):
                name = {"kohya-sgm": ours, "kohya-diffusers": theirs, "peft": "unet." + theirs}[names][:-len(".weight")]
                chosen[f"lora_unet_{name.replace('.', '_')}" if names != "peft" else name] = shapes[ours]
        for tower, (kohya, dotted, _) in zip(towers, self.lora_towers):
            params = dict(tower.named_parameters())
            for name, (weight, rows, transposed) in lora_weight_names(tower).items():
                shape = Target(0, weight, rows, transposed).shape(params[weight].shape)
                chosen[dotted + name if names == "peft" else kohya + name.replace(".", "_")] = shape
        return demo.save_lora(path, chosen, names != "peft", torch.Generator().manual_seed(seed), what)
