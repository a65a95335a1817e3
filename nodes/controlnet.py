"""ControlNets for the UNet families (SD 1.x, 2.x, SDXL): reading the files people download, and applying one to
conditioning.

Layouts, told apart from the tensor names (the config from their shapes):
- original ``cldm`` (lllyasviel's SD 1.x/2.x files, and whole LatentDiffusion+ControlNet checkpoints): the
  network under ``control_model.`` (or no prefix); "diff" files (a ``difference`` tensor) store the change from
  their base UNet, which DiffControlNetLoader adds back;
- diffusers ``ControlNetModel`` (most SDXL ControlNets): a folder with config.json, or its weights file alone.
Head counts are not in the weights: as the families count them, 8 heads where the transformers project with 1×1
convs (SD 1.x), 64-channel heads otherwise (SD 2.x, SDXL); a diffusers config says it.

Applying one (ComfyUI's ``control`` key in a CONDITIONING entry's extras): a ``Control`` holds the hint image,
strength and step range, chained to the control applied before it. The UNet denoiser passes it to its network
call, which adds the residuals of the whole chain to the UNet's skips and middle block (nodes.sdxl.model).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from .families.ldm import infer_unet_config, unet_config_from_diffusers, unet_diffusers_names
from .images import resize
from .sdxl.configs import TINY_BASE_UNET, UNetConfig
from .sdxl.controlnet import HINT_WIDTHS, ControlNetConfig, ControlNetModel, Residuals
from .sdxl.meta import building, empty_modules
from .weights import CheckpointError, UnsupportedCheckpoint, build, read_config, read_shapes, read_tensors, weights_file

PREFIX = "control_model."
SUFFIXES = (".safetensors", ".sft", ".pth", ".pt", ".ckpt", ".bin")
DEMO_CONTROLNET = "demo_controlnet_canny_sdxl.safetensors"
DEMO_NOTICE = ("Demo model: a tiny random-weight SDXL ControlNet (diffusers layout) for the demo SDXL base; it steers "
               "noise. Put real ControlNets in <models>/controlnet.")


# ---- the values on the sockets ----------------------------------------------------------------------------------

class ControlNet(nn.Module):
    """The value on a CONTROL_NET socket: a loaded ControlNet (one module, so the residency service can count, share
    and move it) and how its residuals are used."""

    def __init__(self, model: ControlNetModel, name: str, global_pool: bool = False):
        super().__init__()
        self.model, self.name = model, name
        self.global_pool = global_pool  # "shuffle" ControlNets average each residual over its pixels

    def check(self, unet: UNetConfig, model: str) -> None:
        """ValueError unless this ControlNet fits a UNet of config ``unet`` (``model`` names it for the message)."""
        own = self.model.config.unet
        fields = ("context_dim", "adm_in_channels", "model_channels", "channel_mult", "num_res_blocks")
        if any(getattr(own, f) != getattr(unet, f) for f in fields):
            raise ValueError(f"the ControlNet {self.name!r} is made for another UNet (a {own.context_dim}-wide text "
                             f"context, vector input {own.adm_in_channels or 'none'}, channels {own.channels}) than "
                             f"this {model} model's ({unet.context_dim}, {unet.adm_in_channels or 'none'}, "
                             f"{unet.channels}); use a ControlNet made for its family")


@dataclass(eq=False)
class Control:
    """A ControlNet applied to conditioning: its hint image (IMAGE [B, H, W, C]), strength and step range (fractions
    of the sampling run), after ``previous`` (ControlNets applied one after another add up)."""
    net: ControlNet
    image: torch.Tensor
    strength: float
    start_percent: float = 0.0
    end_percent: float = 1.0
    previous: "Control | None" = None
    _hints: dict = field(default_factory=dict, init=False, repr=False)  # the resized hint, for one size at a time

    def chain(self) -> list["Control"]:
        """The controls in the order they were applied, this one last."""
        return (self.previous.chain() if self.previous else []) + [self]

    def modules(self) -> list[nn.Module]:
        """The networks that must be resident while sampling (nodes.sampling.denoiser.entry_modules)."""
        return [c.net for c in self.chain()]

    def check(self, unet: UNetConfig, model: str) -> None:
        for control in self.chain():
            control.net.check(unet, model)

    def residuals(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, y,
                  sampling) -> Residuals | None:
        """The chain's residuals for one network call (x, timesteps, context, y as the UNet gets them), or None
        when no control's step range covers this step."""
        sigma = float(sampling.sigma(timesteps[:1].float().cpu()))
        total = None
        for control in self.chain():
            if not sampling.percent_to_sigma(control.end_percent) <= sigma <= \
                    sampling.percent_to_sigma(control.start_percent):
                continue
            out = control.net.model(x, control.hint(x), timesteps, context, y)
            out = out.scaled(control.strength, control.net.global_pool)
            total = out if total is None else total + out
        return total

    def hint(self, x: torch.Tensor) -> torch.Tensor:
        """The hint image for latents like ``x``: centre-cropped to their aspect and resized (nearest-exact) to
        their size × 8, as ComfyUI does; batches fitted like conditioning (tiled 1, 2, 1, 2 …, then cut)."""
        batch, _, h, w = x.shape
        dtype = self.net.model.dtype
        key = (batch, h, w, x.device, dtype)
        if key not in self._hints:
            want = self.net.model.config.hint_channels
            image = self.image[..., :want]
            if image.shape[-1] != want:
                raise ValueError(f"the ControlNet {self.net.name!r} takes a {want}-channel image, got "
                                 f"{image.shape[-1]} channels")
            pixels = resize(image, w * 8, h * 8, "nearest-exact", "center").movedim(-1, 1)
            pixels = pixels.repeat(-(-batch // pixels.shape[0]), 1, 1, 1)[:batch]
            self._hints = {key: pixels.to(x.device, dtype)}
        return self._hints[key]


def apply(conditioning: list, net: ControlNet, image: torch.Tensor, strength: float, start: float = 0.0,
          end: float = 1.0, applied: dict | None = None, to_uncond: bool = False) -> list:
    """``conditioning`` with the ControlNet applied to every entry, after any control an entry already has. Entries
    sharing a previous control share the new one (``applied``: previous → new, kept across the positive and
    negative lists so both run in one batch). ``to_uncond`` marks the entries for the negative (Apply ControlNet
    (OLD): see ``with_uncond_controls``)."""
    applied = {} if applied is None else applied
    out = []
    for context, extras in conditioning:
        previous = extras.get("control")
        if id(previous) not in applied:
            applied[id(previous)] = Control(net, image, strength, start, end, previous)
        out.append([context, {**extras, "control": applied[id(previous)], "control_apply_to_uncond": to_uncond}])
    return out


def with_uncond_controls(positive: list, negative: list) -> list:
    """The negative conditioning as ComfyUI samples it: when none of its whole-picture entries has a control, the
    controls of positive entries marked ``control_apply_to_uncond`` (Apply ControlNet (OLD)) go to its whole-picture
    entries, in turn."""
    def whole(entries):
        return [(i, extras) for i, (_, extras) in enumerate(entries) if "area" not in extras]

    controls = [ex["control"] for _, ex in whole(positive) if ex.get("control") and ex.get("control_apply_to_uncond")]
    free = [i for i, ex in whole(negative) if ex.get("control") is None]
    if not controls or not free or len(free) < len(whole(negative)):
        return negative
    out = list(negative)
    for k, control in enumerate(controls):
        i = free[k % len(free)]
        out[i] = [negative[i][0], {**negative[i][1], "control": control}]
    return out


# ---- loading ----------------------------------------------------------------------------------------------------

def load_controlnet(path: str, dtype: torch.dtype, what: str, base: nn.Module | None = None) -> ControlNet:
    """The ControlNet in ``path`` (file or diffusers folder), its floating weights in ``dtype`` on the CPU. ``base``:
    the UNet a "diff" ControlNet's weights are added to. ``what`` names the node and input for messages."""
    name = Path(path).name
    try:
        with building():
            if os.path.isdir(path):
                module, pool = _load_folder(Path(path), dtype)
            else:
                module = _load_file(Path(path), dtype, base)
                pool = "shuffle" in name.lower()  # ComfyUI's rule: the file name says it
    except (UnsupportedCheckpoint, CheckpointError) as exc:
        raise ValueError(f"{what}: {name}: {exc}") from None
    return ControlNet(module, name, pool)


def _load_folder(folder: Path, dtype) -> tuple[ControlNetModel, bool]:
    conf = read_config(folder)
    if conf.get("_class_name", "ControlNetModel") != "ControlNetModel":
        raise UnsupportedCheckpoint(f"a diffusers {conf['_class_name']}, not a ControlNetModel")
    cfg = ControlNetConfig(unet_config_from_diffusers(conf), conf.get("conditioning_channels", 3),
                           tuple(conf.get("conditioning_embedding_out_channels", HINT_WIDTHS)))
    file = weights_file(folder)
    inverse = {d: o for o, d in diffusers_names(cfg).items()}
    state = read_tensors(file, lambda k: inverse.get(k, "unexpected:" + k), dtype, "cpu")
    return build(ControlNetModel, cfg, state, "ControlNet", file), bool(conf.get("global_pool_conditions"))


def _load_file(path: Path, dtype, base: nn.Module | None) -> ControlNetModel:
    shapes, read = _reader(path, dtype)
    if "controlnet_cond_embedding.conv_in.weight" in shapes:
        cfg = config_from_diffusers_shapes(shapes)
        inverse = {d: o for o, d in diffusers_names(cfg).items()}
        return build(ControlNetModel, cfg, read(lambda k: inverse.get(k, "unexpected:" + k)), "ControlNet", path)
    prefix = PREFIX if PREFIX + "zero_convs.0.0.weight" in shapes else ""
    if prefix + "zero_convs.0.0.weight" not in shapes:
        raise UnsupportedCheckpoint(_describe(shapes))
    own = {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}
    cfg = ControlNetConfig(infer_unet_config(own, num_heads=8 if _conv_projections(own) else 0),
                           own["input_hint_block.0.weight"][1],
                           tuple(own[f"input_hint_block.{4 * i}.weight"][0] for i in range(_hint_levels(own))))
    state = read(lambda k: k[len(prefix):] if k.startswith(prefix) and k != "difference" else None)
    if "difference" in shapes:
        if base is None:
            raise UnsupportedCheckpoint("a diff ControlNet (its weights are changes to a base UNet): load it with "
                                        "Load ControlNet Model (diff) and connect the model it was made from")
        base_state = base.state_dict()
        state = {k: v + base_state[k].to(v) if k in base_state and base_state[k].shape == v.shape else v
                 for k, v in state.items()}
    return build(ControlNetModel, cfg, state, "ControlNet", path)


def _reader(path: Path, dtype):
    """(tensor shapes, read(rename) → {new name: tensor}) for a safetensors file or a pickle read without code."""
    if path.suffix.lower() in (".safetensors", ".sft"):
        return read_shapes(path), lambda rename: read_tensors(path, rename, dtype, "cpu")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a foreign or truncated pickle: torch raises many kinds
        raise UnsupportedCheckpoint(f"not a readable weights file ({type(exc).__name__}: {exc})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else {}
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}

    def read(rename):
        out = {}
        for key, value in tensors.items():
            if (new := rename(key)) is not None:
                out[new] = value.to(dtype) if value.is_floating_point() else value
        return out

    return {k: tuple(v.shape) for k, v in tensors.items()}, read


def _describe(shapes: dict) -> str:
    keys = list(shapes)
    if any("lora" in k for k in keys[:500]):
        return "a Control-LoRA (or another LoRA), not a ControlNet; those are not supported yet"
    if any(k.startswith(("adapter.", "body.")) for k in keys):
        return "a T2I-Adapter, not a ControlNet; those are not supported yet"
    if any(k.startswith(("transformer_blocks.", "controlnet_blocks.", "pos_embed_input.")) for k in keys):
        return "a ControlNet for a transformer (MMDiT) model, not for a UNet; those are not supported yet"
    return (f"found no ControlNet ({len(keys)} tensors, e.g. {', '.join(keys[:3])}; expected {PREFIX}zero_convs.*, "
            "zero_convs.* or the diffusers ControlNetModel layout)")


def _conv_projections(shapes: dict) -> bool:
    return any(k.endswith(".proj_in.weight") and len(v) == 4 for k, v in shapes.items())


def _hint_levels(shapes: dict) -> int:
    """Widths in the hint encoder, whose 2 convs per width (the last one to the UNet's width) are 0, 2, 4 …"""
    return sum(1 for k in shapes if k.startswith("input_hint_block.") and k.endswith(".weight")) // 2


def config_from_diffusers_shapes(shapes: dict) -> ControlNetConfig:
    """A diffusers ControlNetModel's config from its weights alone (a weights file without config.json)."""
    def count(prefix):
        return len({k[len(prefix):].split(".")[0] for k in shapes if k.startswith(prefix)})

    levels = count("down_blocks.")
    channels = [shapes[f"down_blocks.{i}.resnets.0.conv2.weight"][0] for i in range(levels)]
    depths = tuple(count(f"down_blocks.{i}.attentions.0.transformer_blocks.") for i in range(levels))
    context = next((v[1] for k, v in shapes.items() if k.endswith("attn2.to_k.weight")), 0)
    conv_proj = _conv_projections(shapes)
    unet = UNetConfig(model_channels=channels[0], channel_mult=tuple(c // channels[0] for c in channels),
                      transformer_depth=depths,
                      transformer_depth_middle=count("mid_block.attentions.0.transformer_blocks."),
                      context_dim=context, adm_in_channels=shapes.get("add_embedding.linear_1.weight", (0, 0))[1],
                      num_res_blocks=count("down_blocks.0.resnets."), in_channels=shapes["conv_in.weight"][1],
                      out_channels=shapes["conv_in.weight"][1], num_heads=8 if conv_proj else 0,
                      use_linear_in_transformer=not conv_proj)
    # blocks keep a width, then halve the size into the next one: the widths are conv_in's and every second block's
    widths = [shapes["controlnet_cond_embedding.conv_in.weight"][0]] + \
        [shapes[f"controlnet_cond_embedding.blocks.{i}.weight"][0]
         for i in range(1, count("controlnet_cond_embedding.blocks."), 2)]
    return ControlNetConfig(unet, shapes["controlnet_cond_embedding.conv_in.weight"][1], tuple(widths))


def diffusers_names(cfg: ControlNetConfig) -> dict[str, str]:
    """Original ControlNet key → diffusers ``ControlNetModel`` key: the UNet's encoder names (sdxl.md §13.1), the
    zero convs as ``controlnet_down_blocks.N`` / ``controlnet_mid_block``, the hint encoder as
    ``controlnet_cond_embedding.{conv_in, blocks.N, conv_out}``."""
    unet = unet_diffusers_names(cfg.unet)
    with empty_modules():
        keys = ControlNetModel(cfg).state_dict().keys()
    last_hint = 4 * (len(cfg.hint_widths) - 1) + 2
    names = {}
    for key in keys:
        head, _, param = key.rpartition(".")
        if key in unet:
            names[key] = unet[key]
        elif head.startswith("zero_convs."):
            names[key] = f"controlnet_down_blocks.{head.split('.')[1]}.{param}"
        elif head == "middle_block_out.0":
            names[key] = f"controlnet_mid_block.{param}"
        else:  # input_hint_block.N
            n = int(head.split(".")[1])
            part = "conv_in" if n == 0 else "conv_out" if n == last_hint else f"blocks.{n // 2 - 1}"
            names[key] = f"controlnet_cond_embedding.{part}.{param}"
    return names


# ---- the demo ---------------------------------------------------------------------------------------------------

def write_demo_controlnet(folder, seed: int = 20240103) -> Path:
    """A tiny random-weight SDXL ControlNet for the demo SDXL base (its encoder's config), in the diffusers layout
    most SDXL ControlNets are shared in (a ``diffusion_pytorch_model.safetensors`` saved under a name)."""
    from .demo import randomize

    cfg = ControlNetConfig(TINY_BASE_UNET)
    net = randomize(ControlNetModel(cfg), torch.Generator().manual_seed(seed))
    names = diffusers_names(cfg)
    path = Path(folder) / DEMO_CONTROLNET
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({names[k]: v.contiguous() for k, v in net.state_dict().items()}, str(path),
              metadata={"latentgraph_demo": DEMO_NOTICE})
    return path
