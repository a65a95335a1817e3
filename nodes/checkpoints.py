"""Find, detect and load SDXL checkpoints: original single-file ``.safetensors`` (base / refiner), diffusers
folders and standalone VAE files (sdxl.md §11).

Loading never doubles peak memory: modules are built on the meta device without init and adopt the tensors as
they are (``nodes.sdxl.meta.adopt``). Tensors already in the target dtype (on CPU) are views of a private memory
map of the file, copied by nothing; the others are converted out of a map into new tensors one by one, dropping
the map's pages behind (mapped pages count as resident memory).
"""
from __future__ import annotations

import functools
import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .sdxl.configs import FOURIER_DIM, UNetConfig, VAEConfig
from .sdxl.meta import StateMismatch, adopt, building, empty_modules
from .sdxl.text import build_text_encoders
from .sdxl.unet import UNetModel
from .sdxl.vae import AutoencoderKL

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
BIGG_PREFIX = {"sdxl_base": "conditioner.embedders.1.model.", "sdxl_refiner": "conditioner.embedders.0.model."}
# Training leftovers some single files carry; never needed for inference.
IGNORED_PREFIXES = ("model_ema.", "denoiser.")


class UnsupportedCheckpoint(ValueError):
    """The file is readable but is not an SDXL base or refiner checkpoint (the message says what it is)."""


class CheckpointError(ValueError):
    """The file claims a supported layout but its tensors do not fit it (missing / unexpected / misshapen)."""


@dataclass
class Checkpoint:
    kind: str  # "sdxl_base" | "sdxl_refiner"
    unet: UNetModel
    unet_config: UNetConfig
    vae: AutoencoderKL
    text: object  # nodes.sdxl.text.SDXLTextEncoders
    path: Path
    dtype: torch.dtype


def default_dtype(device) -> torch.dtype:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


# ---- reading safetensors ----------------------------------------------------------------------------------

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


def read_header(path: Path) -> tuple[dict, int]:
    """The safetensors header (name → {dtype, shape, data_offsets}) and where the data starts. Parsed once
    per file version (a load reads it for detection and for each component; the real one is 250 kB of JSON)."""
    st = os.stat(path)
    return _parse_header(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _parse_header(path: str, size: int, mtime_ns: int) -> tuple[dict, int]:
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:
            raise CheckpointError(f"{path}: not a safetensors file (bad header length)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: not a safetensors file ({e})") from None
    header.pop("__metadata__", None)
    return header, 8 + n


def read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v["shape"]) for k, v in read_header(Path(path))[0].items()}


def read_tensors(path: Path, rename: Callable[[str], str | None], dtype: torch.dtype, device) -> dict[str, torch.Tensor]:
    """Tensors whose ``rename(key)`` is not None, under the new names; floating tensors cast to ``dtype``."""
    header, start = read_header(path)
    wanted = []
    for key, info in header.items():
        name = rename(key)
        if name is not None:
            if info["dtype"] not in _DTYPES:
                raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
            wanted.append((name, info))
    wanted.sort(key=lambda kv: kv[1]["data_offsets"][0])
    size = os.path.getsize(path)
    for name, info in wanted:
        if start + info["data_offsets"][1] > size:
            raise CheckpointError(f"{path}: file is truncated at tensor {name}")
    if torch.device(device).type == "cpu" and all(
            (not _DTYPES[info["dtype"]].is_floating_point or _DTYPES[info["dtype"]] == dtype)
            and (start + info["data_offsets"][0]) % _DTYPES[info["dtype"]].itemsize == 0 for _, info in wanted):
        return _mapped_tensors(path, start, wanted)
    return _converted_tensors(path, start, wanted, dtype, device)


def _mapped_tensors(path: Path, start: int, wanted: list) -> dict[str, torch.Tensor]:
    """Every tensor is already in its target dtype and aligned: view them straight out of a private (copy-on-write)
    memory map of the file. No copy at all, pages come from the page cache as they are used, and peak memory
    stays at the weights' size."""
    nbytes = os.path.getsize(path)
    storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=nbytes)
    flat, out = {}, {}  # the whole map as a flat tensor of each dtype; every tensor is a strided view of one
    for name, info in wanted:
        dt = _DTYPES[info["dtype"]]
        if dt not in flat:
            flat[dt] = torch.empty(0, dtype=dt).set_(storage, 0, (nbytes // dt.itemsize,))
        shape, strides, step = info["shape"], [], 1
        for size in reversed(shape):
            strides.append(step)
            step *= size
        out[name] = flat[dt].as_strided(shape, strides[::-1], (start + info["data_offsets"][0]) // dt.itemsize)
    return out


def _converted_tensors(path: Path, start: int, wanted: list, dtype: torch.dtype, device) -> dict[str, torch.Tensor]:
    """Copy each tensor out of a memory map of the file into a new one of the target dtype/device (torch converts in
    one parallel pass, reading the page cache directly: 6.0 → 3.7 s for the base UNet fp16 → fp32, against a read()
    per tensor into a buffer then a cast). The map's pages count as resident memory, so those already converted are
    dropped as the copy moves through the file: the peak stays at the weights plus at most ``_DROP_EVERY``."""
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # private and writable: torch wants a writable buffer
    whole, src, out, dropped = torch.frombuffer(mm, dtype=torch.uint8), None, {}, 0
    for name, info in wanted:
        begin, end = (start + o for o in info["data_offsets"])
        src = whole[begin:end].view(_DTYPES[info["dtype"]]).reshape(info["shape"])
        target = dtype if src.is_floating_point() else src.dtype
        out[name] = torch.empty(src.shape, dtype=target, device=device).copy_(src)
        done = end // mmap.PAGESIZE * mmap.PAGESIZE
        if done - dropped >= _DROP_EVERY:
            mm.madvise(mmap.MADV_DONTNEED, dropped, done - dropped)
            dropped = done
    del whole, src  # the map can close only once no tensor views it
    mm.close()
    return out


_DROP_EVERY = 64 << 20


def _fit(module: nn.Module, state: dict[str, torch.Tensor], what: str, path: Path) -> nn.Module:
    """Adopt ``state`` into a meta-built module; any missing, unexpected or misshapen key is an error."""
    try:
        return adopt(module, state)
    except StateMismatch as e:
        raise CheckpointError(f"{path}: {what} weights do not fit — {e}") from None


def _build(cls, cfg, state, what, path) -> nn.Module:
    with empty_modules():
        module = cls(cfg)
    return _fit(module, state, what, path)


# ---- detection --------------------------------------------------------------------------------------------

def detect(shapes: dict[str, tuple]) -> str:
    """"sdxl_base" or "sdxl_refiner" from key names and shapes of a single-file checkpoint; anything else raises
    UnsupportedCheckpoint saying what was found."""
    conv_in = shapes.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is None:
        raise UnsupportedCheckpoint(_describe_non_unet(shapes))
    if "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in shapes or \
            "cond_stage_model.transformer.embeddings.token_embedding.weight" in shapes:
        raise UnsupportedCheckpoint("found a Stable Diffusion 1.x checkpoint (CLIP-L text encoder at "
                                    "cond_stage_model.transformer); only SDXL base and refiner are supported")
    if any(k.startswith("cond_stage_model.model.") for k in shapes):
        raise UnsupportedCheckpoint("found a Stable Diffusion 2.x checkpoint (OpenCLIP-H text encoder at "
                                    "cond_stage_model.model); only SDXL base and refiner are supported")
    if conv_in[1] != 4:
        variant = "an inpainting" if conv_in[1] == 9 else f"a {conv_in[1]}-channel-input"
        raise UnsupportedCheckpoint(f"found {variant} UNet (input_blocks.0.0.weight {list(conv_in)}); "
                                    "only 4-channel SDXL base and refiner are supported")
    label = shapes.get(UNET_PREFIX + "label_emb.0.0.weight")
    if label is None:
        raise UnsupportedCheckpoint("found a UNet without the SDXL vector conditioning (no label_emb); "
                                    "this is not an SDXL checkpoint")
    has_clip_l = CLIP_L_PREFIX + "text_model.embeddings.token_embedding.weight" in shapes
    base_proj = shapes.get(BIGG_PREFIX["sdxl_base"] + "text_projection")
    refiner_proj = shapes.get(BIGG_PREFIX["sdxl_refiner"] + "text_projection")
    if has_clip_l and base_proj is not None:
        kind, pooled, n_scalars = "sdxl_base", base_proj[1], 6
    elif refiner_proj is not None and not has_clip_l:
        kind, pooled, n_scalars = "sdxl_refiner", refiner_proj[1], 5
    else:
        raise UnsupportedCheckpoint(
            f"found an SDXL-like UNet (adm {label[1]}) but not the text encoders of the SDXL base (CLIP-L at "
            f"{CLIP_L_PREFIX} + OpenCLIP bigG at {BIGG_PREFIX['sdxl_base']}) or refiner (bigG at "
            f"{BIGG_PREFIX['sdxl_refiner']}); checkpoints without text encoders are not supported")
    if label[1] != pooled + n_scalars * FOURIER_DIM:
        raise UnsupportedCheckpoint(f"found {kind} text encoders but a UNet vector input of {label[1]} "
                                    f"(expected {pooled} pooled + {n_scalars}×{FOURIER_DIM})")
    return kind


def _describe_non_unet(shapes: dict) -> str:
    keys = list(shapes)
    if any(k.startswith(("encoder.", "decoder.", VAE_PREFIX)) for k in keys) and \
            not any(k.startswith(("model.", "conditioner.", "cond_stage_model.")) for k in keys):
        return "found a standalone VAE, not a full checkpoint; load it with the VAE loader"
    if "conv_in.weight" in shapes and any(k.startswith("down_blocks.") for k in keys):
        return "found a diffusers-layout UNet file; point the loader at the diffusers folder instead"
    if any(k.startswith(("lora_", "lora_unet_")) or ".lora_" in k for k in keys[:200]):
        return "found a LoRA, not a checkpoint"
    sample = ", ".join(keys[:3])
    return f"found no UNet at {UNET_PREFIX}* ({len(keys)} tensors, e.g. {sample}); not an SDXL checkpoint"


# ---- config inference from shapes -------------------------------------------------------------------------

def _count(shapes: dict, prefix: str) -> int:
    """Number of consecutive integer children ``prefix{N}.`` present."""
    children = {k[len(prefix):].split(".", 1)[0] for k in shapes if k.startswith(prefix)}
    n = 0
    while str(n) in children:
        n += 1
    return n


def infer_unet_config(shapes: dict, num_head_channels: int = 64) -> UNetConfig:
    """UNet config from original-layout UNet shapes (prefix stripped), like sdxl.md §11.2."""
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
    return UNetConfig(
        model_channels=c, channel_mult=tuple(mults), transformer_depth=tuple(depths),
        transformer_depth_middle=_count(shapes, "middle_block.1.transformer_blocks."),
        context_dim=ctx, adm_in_channels=shapes["label_emb.0.0.weight"][1], num_res_blocks=level_blocks[0],
        num_head_channels=num_head_channels, in_channels=conv_in[1], out_channels=shapes["out.2.weight"][0])


def infer_vae_config(shapes: dict) -> VAEConfig:
    """VAE config from original-layout VAE shapes (prefix stripped)."""
    ch = shapes["encoder.conv_in.weight"][0]
    levels = _count(shapes, "encoder.down.")
    mult = tuple(shapes[f"encoder.down.{i}.block.0.conv1.weight"][0] // ch for i in range(levels))
    return VAEConfig(ch=ch, ch_mult=mult, num_res_blocks=_count(shapes, "encoder.down.0.block."),
                     z_channels=shapes["decoder.conv_in.weight"][1], in_channels=shapes["encoder.conv_in.weight"][1],
                     out_channels=shapes["decoder.conv_out.weight"][0])


# ---- diffusers ↔ original key maps (sdxl.md §13.1, §13.3) ------------------------------------------------

_RESNET_UNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}


def unet_diffusers_names(cfg: UNetConfig) -> dict[str, str]:
    """Original UNet key → diffusers ``UNet2DConditionModel`` key, for every tensor of ``cfg``."""
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


# ---- single-file checkpoints -------------------------------------------------------------------------------

def load_checkpoint(path, device="cpu", dtype: torch.dtype | None = None, with_text: bool = True) -> Checkpoint:
    """A single-file SDXL checkpoint or a diffusers folder → Checkpoint (UNet, VAE and, unless ``with_text`` is
    False, the text encoders)."""
    with building():
        return _load_checkpoint(Path(path), device, dtype, with_text)


def _load_checkpoint(path: Path, device, dtype, with_text: bool) -> Checkpoint:
    dtype = dtype or default_dtype(device)
    if path.is_dir():
        return _load_diffusers(path, device, dtype, with_text)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix.lower() not in (".safetensors", ".sft"):
        raise UnsupportedCheckpoint(f"{path.name}: only .safetensors files are loaded (pickled .ckpt/.pt files "
                                    "can run arbitrary code)")
    shapes = read_shapes(path)
    kind = detect(shapes)
    bigg = BIGG_PREFIX[kind]
    unknown = [k for k in shapes if not k.startswith((UNET_PREFIX, VAE_PREFIX, bigg, *IGNORED_PREFIXES))
               and not (kind == "sdxl_base" and k.startswith(CLIP_L_PREFIX))]
    if unknown:
        raise CheckpointError(f"{path}: {len(unknown)} tensors outside the SDXL components, e.g. {unknown[:3]}")
    unet_cfg = infer_unet_config({k[len(UNET_PREFIX):]: v for k, v in shapes.items() if k.startswith(UNET_PREFIX)})
    vae_cfg = infer_vae_config({k[len(VAE_PREFIX):]: v for k, v in shapes.items() if k.startswith(VAE_PREFIX)})

    def strip(prefix):
        return lambda k: k[len(prefix):] if k.startswith(prefix) else None

    unet = _build(UNetModel, unet_cfg, read_tensors(path, strip(UNET_PREFIX), dtype, device), "UNet", path)
    vae = _build(AutoencoderKL, vae_cfg, read_tensors(path, strip(VAE_PREFIX), dtype, device), "VAE", path)

    def text_name(k):
        if kind == "sdxl_base" and k.startswith(CLIP_L_PREFIX):
            return "clip_l." + k[len(CLIP_L_PREFIX):]
        return "clip_g." + k[len(bigg):] if k.startswith(bigg) else None

    text = None
    if with_text:
        text = _text_encoders(kind, read_tensors(path, text_name, dtype, device), "original", dtype, device, path)
    return Checkpoint(kind, unet, unet_cfg, vae, text, path, dtype)


def _text_encoders(kind, state, layout, dtype, device, path):
    try:
        return build_text_encoders(kind, state, layout, dtype, device)
    except (KeyError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: text encoders do not load — {e}") from e


# ---- diffusers folders -------------------------------------------------------------------------------------

def _weights_file(folder: Path) -> Path:
    for name in ("diffusion_pytorch_model.safetensors", "model.safetensors",
                 "diffusion_pytorch_model.fp16.safetensors", "model.fp16.safetensors"):
        if (folder / name).exists():
            return folder / name
    if any(folder.glob("*.safetensors.index.json")):
        raise UnsupportedCheckpoint(f"{folder}: sharded weights are not supported; save the component unsharded")
    raise CheckpointError(f"{folder}: no safetensors weights (diffusion_pytorch_model.safetensors / model.safetensors)")


def _read_config(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: config.json is missing") from None


def unet_config_from_diffusers(conf: dict) -> UNetConfig:
    """UNetConfig from a diffusers ``unet/config.json``; its ``attention_head_dim`` is the head count per level."""
    boc = list(conf["block_out_channels"])
    n = len(boc)
    per_level = lambda v: list(v) if isinstance(v, (list, tuple)) else [v] * n  # noqa: E731
    tlpb = per_level(conf.get("transformer_layers_per_block", 1))
    heads = per_level(conf.get("num_attention_heads") or conf["attention_head_dim"])
    attn = [t.startswith("CrossAttn") for t in conf["down_block_types"]]
    depths = tuple(tlpb[i] if attn[i] else 0 for i in range(n))
    head_channels = {boc[i] // heads[i] for i in range(n) if attn[i]} | {boc[-1] // heads[-1]}
    if len(head_channels) != 1:
        raise UnsupportedCheckpoint(f"UNet config has different channels per head across levels {head_channels}")
    if conf.get("addition_embed_type") != "text_time" or conf.get("addition_time_embed_dim", FOURIER_DIM) != FOURIER_DIM:
        raise UnsupportedCheckpoint("UNet config is not SDXL's (needs addition_embed_type text_time, "
                                    f"addition_time_embed_dim {FOURIER_DIM})")
    mid_type = conf.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    return UNetConfig(
        model_channels=boc[0], channel_mult=tuple(c // boc[0] for c in boc), transformer_depth=depths,
        transformer_depth_middle=tlpb[-1] if mid_type == "UNetMidBlock2DCrossAttn" else 0,
        context_dim=conf["cross_attention_dim"], adm_in_channels=conf["projection_class_embeddings_input_dim"],
        num_res_blocks=conf.get("layers_per_block", 2), num_head_channels=head_channels.pop(),
        in_channels=conf.get("in_channels", 4), out_channels=conf.get("out_channels", 4))


def vae_config_from_diffusers(conf: dict) -> VAEConfig:
    boc = list(conf["block_out_channels"])
    return VAEConfig(ch=boc[0], ch_mult=tuple(c // boc[0] for c in boc), num_res_blocks=conf.get("layers_per_block", 1),
                     z_channels=conf.get("latent_channels", 4), in_channels=conf.get("in_channels", 3),
                     out_channels=conf.get("out_channels", 3), scaling_factor=conf.get("scaling_factor", 0.13025))


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


def load_diffusers_unet(folder: Path, device="cpu", dtype=None) -> tuple[UNetModel, UNetConfig]:
    """A diffusers ``unet/`` folder (config.json + safetensors) → our UNet in the original layout."""
    folder, dtype = Path(folder), dtype or default_dtype(device)
    cfg = unet_config_from_diffusers(_read_config(folder))
    file = _weights_file(folder)
    state = _from_diffusers(file, unet_diffusers_names(cfg), dtype, device)
    return _build(UNetModel, cfg, state, "UNet", file), cfg


def _load_diffusers_vae(folder: Path, dtype, device) -> AutoencoderKL:
    cfg = vae_config_from_diffusers(_read_config(folder))
    file = _weights_file(folder)
    state = _from_diffusers(file, vae_diffusers_names(cfg), dtype, device)
    _vae_attention_to_conv(state)
    return _build(AutoencoderKL, cfg, state, "VAE", file)


def _diffusers_kind(path: Path) -> str:
    """Base has text_encoder/ (CLIP-L) and text_encoder_2/ (bigG), the refiner only text_encoder_2/; the UNet's
    vector input must be bigG's projection plus 6 (base) or 5 (refiner) Fourier features."""
    if not (path / "text_encoder_2").is_dir():
        raise UnsupportedCheckpoint(f"{path}: not an SDXL pipeline folder (no text_encoder_2/ with OpenCLIP bigG)")
    kind = "sdxl_base" if (path / "text_encoder").is_dir() else "sdxl_refiner"
    n_scalars = 6 if kind == "sdxl_base" else 5
    pooled = _read_config(path / "text_encoder_2").get("projection_dim")
    adm = _read_config(path / "unet").get("projection_class_embeddings_input_dim")
    if pooled is None or adm != pooled + n_scalars * FOURIER_DIM:
        found = "text_encoder/ and text_encoder_2/" if kind == "sdxl_base" else "only text_encoder_2/"
        raise UnsupportedCheckpoint(f"{path}: found {found} but a UNet vector input of {adm}, which is not "
                                    f"{pooled} pooled + {n_scalars}×{FOURIER_DIM}; not an SDXL {kind[5:]}")
    return kind


def _load_diffusers(path: Path, device, dtype, with_text: bool) -> Checkpoint:
    if not (path / "unet").is_dir():
        if (path / "config.json").exists() and (path / "diffusion_pytorch_model.safetensors").exists():
            raise UnsupportedCheckpoint(f"{path}: a single diffusers component, not a pipeline folder "
                                        "(needs unet/, vae/, text_encoder_2/)")
        raise UnsupportedCheckpoint(f"{path}: not a diffusers folder (no unet/ subfolder)")
    kind = _diffusers_kind(path)
    unet, cfg = load_diffusers_unet(path / "unet", device, dtype)
    vae = _load_diffusers_vae(path / "vae", dtype, device)
    text = None
    if with_text:
        state = {}
        for sub in ("text_encoder", "text_encoder_2") if kind == "sdxl_base" else ("text_encoder_2",):
            prefix = sub + "."
            state.update(read_tensors(_weights_file(path / sub), lambda k, p=prefix: p + k, dtype, device))
        text = _text_encoders(kind, state, "diffusers", dtype, device, path)
    return Checkpoint(kind, unet, cfg, vae, text, path, dtype)


# ---- standalone VAE ----------------------------------------------------------------------------------------

def load_vae(path, device="cpu", dtype: torch.dtype | None = None) -> AutoencoderKL:
    """A VAE from a standalone file (original layout with or without ``first_stage_model.``, or diffusers
    layout), a diffusers ``vae/`` folder, or a diffusers pipeline folder."""
    path = Path(path)
    dtype = dtype or default_dtype(device)
    if path.is_dir():
        folder = path / "vae" if (path / "vae").is_dir() else path
        return _load_diffusers_vae(folder, dtype, device)
    if not path.exists():
        raise FileNotFoundError(f"VAE not found: {path}")
    shapes = read_shapes(path)
    if any(k.startswith(VAE_PREFIX) for k in shapes):
        prefix = VAE_PREFIX
    elif "encoder.conv_in.weight" in shapes or "decoder.conv_in.weight" in shapes:
        prefix = ""
    else:
        raise UnsupportedCheckpoint(f"{path.name}: found no VAE (no encoder.conv_in / first_stage_model.*)")
    own = {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}
    if "encoder.down_blocks.0.resnets.0.conv1.weight" in own:  # diffusers layout without a config
        cfg = _vae_config_from_diffusers_shapes(own)
        state = _from_diffusers(path, vae_diffusers_names(cfg), dtype, device)
        _vae_attention_to_conv(state)
        return _build(AutoencoderKL, cfg, state, "VAE", path)
    cfg = infer_vae_config(own)
    state = read_tensors(path, lambda k: k[len(prefix):] if k.startswith(prefix) else None, dtype, device)
    if prefix == "":
        # tolerate a few extra bookkeeping tensors some VAE files carry (e.g. model_ema.*)
        state = {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}
    return _build(AutoencoderKL, cfg, state, "VAE", path)


def _vae_config_from_diffusers_shapes(shapes: dict) -> VAEConfig:
    ch = shapes["encoder.conv_in.weight"][0]
    levels = _count(shapes, "encoder.down_blocks.")
    return VAEConfig(ch=ch, ch_mult=tuple(shapes[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"][0] // ch
                                          for i in range(levels)),
                     num_res_blocks=_count(shapes, "encoder.down_blocks.0.resnets."),
                     z_channels=shapes["decoder.conv_in.weight"][1])
