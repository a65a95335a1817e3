"""CLIP vision towers (the image half of CLIP) as ComfyUI's CLIPVisionLoader / CLIPVisionEncode use them: the model is
transformers' ``CLIPVisionModelWithProjection``, built from a config read off the state dict's shapes, and pictures
are prepared the way ComfyUI prepares them.

Layouts read:
- transformers (``vision_model.*`` + ``visual_projection.weight``): ComfyUI's ``clip_vision_g.safetensors`` (the
  SDXL revision tower, OpenCLIP ViT-bigG/14), the IP-Adapter ``image_encoder`` files (ViT-H/14, bigG) and OpenAI's
  ViT-L/14 (224 and 336 px); a whole ``CLIPModel`` file too (its text half is left out);
- open_clip (``visual.*``: ``conv1``, ``transformer.resblocks.N.attn.in_proj_weight``, ``proj``), as in
  ``open_clip_pytorch_model.bin`` / ``.safetensors`` files, converted to the transformers names.

Head counts and activations are not in the weights: the known towers' are in ``KNOWN`` (by width and depth); others
get 64 channels per head and GELU (the tiny demo tower: ``TINY``'s 4 heads).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .sdxl.text import open_clip_blocks_to_hf

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's normalisation, used by every CLIP vision tower
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Tower:
    """What the weights do not say about a tower: heads and activation (OpenAI's towers use quick_gelu)."""
    name: str
    heads: int
    act: str = "gelu"


KNOWN = {(1664, 48): Tower("ViT-bigG/14", 16), (1280, 32): Tower("ViT-H/14", 16),
         (1024, 24): Tower("ViT-L/14", 16, "quick_gelu"), (768, 12): Tower("ViT-B", 12, "quick_gelu")}
TINY = dict(width=64, layers=2, heads=4, mlp=128, patch=32, image=224)  # the demo tower: 4 heads of 16 channels
DEMO_CLIP_VISION = "demo_clip_vision_g.safetensors"
DEMO_NOTICE = "Demo model: a tiny random-weight CLIP vision tower in clip_vision_g's layout; its embeddings are noise."


@dataclass(frozen=True)
class ClipVisionOutput:
    """The value on a CLIP_VISION_OUTPUT socket, with ComfyUI's attribute names (float32, CPU)."""
    image_embeds: torch.Tensor  # [B, projection_dim]: the projected class token, what unCLIP / revision use
    last_hidden_state: torch.Tensor  # [B, tokens, width]
    penultimate_hidden_states: torch.Tensor  # [B, tokens, width]: the last-but-one layer (IP-Adapter plus)


class ClipVision(nn.Module):
    """The value on a CLIP_VISION socket: the tower and its input size, one module for the residency service."""

    def __init__(self, model: nn.Module, name: str, tower: str):
        super().__init__()
        self.model = model
        self.name = name
        self.tower = tower  # "ViT-bigG/14", …, or "unknown (64 wide, 2 layers)"

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    @property
    def projection_dim(self) -> int:
        return self.model.config.projection_dim


# -- reading a file ---------------------------------------------------------------------------------------------

_OPEN_CLIP_NAMES = {"class_embedding": "embeddings.class_embedding",
                    "positional_embedding": "embeddings.position_embedding.weight",
                    "conv1.weight": "embeddings.patch_embedding.weight", "ln_pre.weight": "pre_layrnorm.weight",
                    "ln_pre.bias": "pre_layrnorm.bias", "ln_post.weight": "post_layernorm.weight",
                    "ln_post.bias": "post_layernorm.bias"}


def _open_clip_to_transformers(visual: dict[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """open_clip ``visual.*`` names (prefix removed) → ``CLIPVisionModelWithProjection`` names; ``proj``
    [width, dim] (x @ proj) becomes the Linear weight [dim, width]."""
    out = open_clip_blocks_to_hf(visual, "vision_model.")
    for key, value in visual.items():
        if key == "proj":
            out["visual_projection.weight"] = value.t().contiguous()
        elif key in _OPEN_CLIP_NAMES:
            out["vision_model." + _OPEN_CLIP_NAMES[key]] = value
        elif not key.startswith("transformer.resblocks."):
            raise ValueError(f"{what}: an open_clip visual tower weight latentgraph does not know: visual.{key}")
    return out


def _find_tower(names, what: str) -> tuple[str, str]:
    """(prefix, layout) of the vision tower among the tensor names: "transformers" or "open_clip"."""
    for key in names:
        if key.endswith("vision_model.embeddings.class_embedding"):
            return key[: -len("vision_model.embeddings.class_embedding")], "transformers"
        if key.endswith("visual.class_embedding"):
            return key[: -len("class_embedding")], "open_clip"
    names = list(names)
    raise ValueError(f"{what}: not a CLIP vision model: no 'vision_model.embeddings.class_embedding' "
                     f"(transformers layout) or 'visual.class_embedding' (open_clip layout) among its {len(names)} "
                     f"tensors ({', '.join(names[:3])}, …)")


def vision_state(state: dict[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """The vision tower's weights in transformers names, from a file in either layout (any prefix before
    ``vision_model.`` or ``visual.``). Raises ValueError saying what was found for a file that has no tower."""
    prefix, layout = _find_tower(state, what)
    kept = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if layout == "open_clip":
        return _open_clip_to_transformers(kept, what)
    return {k: v for k, v in kept.items() if k.startswith(("vision_model.", "visual_projection."))
            and not k.endswith("position_ids")}


def _read(path: str, dtype: torch.dtype, what: str) -> dict[str, torch.Tensor]:
    """The file's tensors (floating ones in `dtype`). A .safetensors file is read through nodes.weights: only the
    tower's tensors, cast one at a time out of a memory map (peak ≈ the weights in `dtype`); a pickle is read whole
    without running code, then cast. `what` names the node, input and file for messages."""
    from .upscale_models import read_state_dict
    from .weights import read_shapes, read_tensors

    def unreadable(exc: Exception) -> ValueError:
        return ValueError(f"{what}: cannot read it as model weights ({exc})")

    # a truncated or foreign file: torch and safetensors raise many kinds of exception
    try:
        if not path.lower().endswith((".safetensors", ".sft")):
            return {k: v.to(dtype) if v.is_floating_point() else v for k, v in read_state_dict(path).items()}
        names = read_shapes(Path(path))
    except Exception as exc:
        raise unreadable(exc) from None
    prefix, _ = _find_tower(names, what)
    try:
        return read_tensors(Path(path), lambda k: k if k.startswith(prefix) else None, dtype, "cpu")
    except Exception as exc:
        raise unreadable(exc) from None


def vision_config(sd: dict[str, torch.Tensor], what: str):
    """The ``CLIPVisionConfig`` the shapes call for, and the tower's name."""
    from transformers import CLIPVisionConfig

    def need(key):
        if key not in sd:
            raise ValueError(f"{what}: the CLIP vision tower has no {key!r}")
        return sd[key]

    width = need("vision_model.embeddings.class_embedding").shape[0]
    patch = need("vision_model.embeddings.patch_embedding.weight").shape[-1]
    positions = need("vision_model.embeddings.position_embedding.weight").shape[0]
    layers = len({k.split(".")[3] for k in sd if k.startswith("vision_model.encoder.layers.")})
    side = math.isqrt(positions - 1)
    if side * side != positions - 1:
        raise ValueError(f"{what}: {positions} position embeddings is not a square grid plus the class token")
    tower = KNOWN.get((width, layers))
    if tower is None:
        if width != TINY["width"] and width % 64:
            raise ValueError(f"{what}: cannot tell the attention head count of a {width}-wide CLIP vision tower")
        tower = Tower(f"unknown ({width} wide, {layers} layers)",
                      TINY["heads"] if width == TINY["width"] else width // 64)
    config = CLIPVisionConfig(
        hidden_size=width, intermediate_size=need("vision_model.encoder.layers.0.mlp.fc1.weight").shape[0],
        num_hidden_layers=layers, num_attention_heads=tower.heads, image_size=side * patch, patch_size=patch,
        projection_dim=need("visual_projection.weight").shape[0], hidden_act=tower.act, layer_norm_eps=1e-5)
    return config, tower.name


def load_clip_vision(path: str, dtype: torch.dtype = torch.float32, what: str = "") -> ClipVision:
    """The CLIP vision tower in `path` (.safetensors, or a pickle read without running code), in `dtype`. `what`
    names the node and input for messages."""
    from transformers import CLIPVisionModelWithProjection

    from .sdxl.meta import StateMismatch, adopt, empty_modules

    name = Path(path).name
    state = _read(path, dtype, f"{what}: {name!r}")
    sd = vision_state(state, f"{what}: {name!r}")
    config, tower = vision_config(sd, f"{what}: {name!r}")
    with empty_modules():
        model = CLIPVisionModelWithProjection(config)
    try:
        adopt(model, sd)
    except StateMismatch as exc:
        raise ValueError(f"{what}: {name!r} does not fit a {tower} CLIP vision tower: {exc}") from None
    emb = model.vision_model.embeddings
    emb.position_ids = torch.arange(emb.position_embedding.weight.shape[0])[None]  # non-persistent: not in files
    return ClipVision(model, name, tower)


# -- encoding ---------------------------------------------------------------------------------------------------

def preprocess(images: torch.Tensor, size: int, crop: bool = True) -> torch.Tensor:
    """IMAGE [B, H, W, C] in 0..1 → CLIP pixel values [B, 3, size, size], as ComfyUI feeds its CLIP vision models.
    crop: the shorter side is resized to `size` (bicubic, antialiased) and the middle square kept; otherwise the
    picture is squashed to size × size. Then quantised to 8 bits (as ComfyUI does; CLIPImageProcessor takes 8-bit
    pictures) and normalised with CLIP's mean and std."""
    x = images[..., :3].movedim(-1, 1).float()
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        scale = size / min(h, w)
        target = (round(h * scale), round(w * scale)) if crop else (size, size)
        x = nn.functional.interpolate(x, size=target, mode="bicubic", antialias=True)
        top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
        x = x[..., top:top + size, left:left + size]
    x = (x * 255).clamp(0, 255).round() / 255
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def encode(clip_vision: ClipVision, images: torch.Tensor, crop: bool = True) -> ClipVisionOutput:
    """Run the tower on pictures (IMAGE); outputs in float32 on the CPU."""
    model = clip_vision.model
    param = next(model.parameters())
    pixels = preprocess(images.to(param.device), clip_vision.image_size, crop).to(param.dtype)
    out = model(pixel_values=pixels, output_hidden_states=True)
    return ClipVisionOutput(image_embeds=out.image_embeds.float().cpu(),
                            last_hidden_state=out.last_hidden_state.float().cpu(),
                            penultimate_hidden_states=out.hidden_states[-2].float().cpu())


# -- the demo tower ---------------------------------------------------------------------------------------------

def write_demo_clip_vision(folder, seed: int = 20240101) -> Path:
    """The demo tower in clip_vision_g's layout (``vision_model.*`` + ``visual_projection.weight``), projecting to
    the demo SDXL base's pooled width, so the revision workflow runs on the demo checkpoints."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from .demo import randomize
    from .sdxl.configs import TINY_BIGG_WIDTH

    config = CLIPVisionConfig(hidden_size=TINY["width"], intermediate_size=TINY["mlp"],
                              num_hidden_layers=TINY["layers"], num_attention_heads=TINY["heads"],
                              image_size=TINY["image"], patch_size=TINY["patch"], projection_dim=TINY_BIGG_WIDTH,
                              hidden_act="gelu", layer_norm_eps=1e-5)
    model = randomize(CLIPVisionModelWithProjection(config), torch.Generator().manual_seed(seed))
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    path = Path(folder) / DEMO_CLIP_VISION
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"latentgraph_demo": DEMO_NOTICE})
    return path
