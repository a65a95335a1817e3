"""Image upscale models (ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT, OmniSR, SPAN, …) through spandrel, which tells the
architecture and its hyperparameters from the state dict alone. Pictures are upscaled in overlapping tiles blended
over the overlaps (nodes.tiling), one picture at a time, so memory stays bounded by one tile's activations whatever
the picture's size; a tile that does not fit the device is halved and tried again."""
from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .tiling import tile_count, tiled_apply

UPSCALE_SUFFIXES = (".safetensors", ".sft", ".pth", ".pt", ".ckpt", ".bin")
TILE, OVERLAP = 512, 32  # input pixels, as ComfyUI tiles ImageUpscaleWithModel
DEMO_UPSCALER = "demo_esrgan_4x.safetensors"
DEMO_NOTICE = "Demo model: a tiny random-weight ESRGAN (4×) in the original layout; it upscales into noise."


class UpscaleModel(nn.Module):
    """A spandrel image-to-image model as one module, so the residency service can count, share and move it (the
    descriptor holds the same network, which it pads to the model's size rules, runs and clamps to 0..1)."""

    def __init__(self, descriptor, name: str):
        super().__init__()
        self.net = descriptor.model
        self.descriptor = descriptor
        self.name = name

    @property
    def scale(self) -> int:
        return self.descriptor.scale


def read_state_dict(path: str) -> dict:
    """Tensors of a .safetensors file, or of a pickle read by torch's safe loader: tensors and plain containers
    only, never code (upscale models are often shared as .pth)."""
    if path.lower().endswith((".safetensors", ".sft")):
        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def _supported_dtype(descriptor, dtype: torch.dtype) -> torch.dtype:
    if (dtype == torch.float16 and not descriptor.supports_half) or \
            (dtype == torch.bfloat16 and not descriptor.supports_bfloat16):
        return torch.float32
    return dtype


def load_upscale_model(path: str, dtype: torch.dtype = torch.float32, what: str = "") -> UpscaleModel:
    """The upscale model in `path` (any layout spandrel knows), in `dtype` where the architecture supports it.
    `what` names the node and input for messages."""
    import spandrel

    name = Path(path).name
    try:
        state = read_state_dict(path)
    except Exception as exc:  # a truncated or foreign file: torch and safetensors raise many kinds
        raise ValueError(f"{what}: cannot read {name!r} as model weights ({exc})") from None
    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(spandrel.canonicalize_state_dict(state))
    except spandrel.UnsupportedModelError:
        raise ValueError(f"{what}: {name!r} is not an upscale model spandrel {spandrel.__version__} knows (ESRGAN, "
                         "Real-ESRGAN, SwinIR, HAT, DAT, …)") from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise ValueError(f"{what}: {name!r} is a {descriptor.architecture.name} {descriptor.purpose} model, not a "
                         "single-image upscale model")
    descriptor.to(_supported_dtype(descriptor, dtype)).eval()
    return UpscaleModel(descriptor, name)


def upscale(model: UpscaleModel, images: torch.Tensor, tile: int = TILE, overlap: int = OVERLAP,
            progress=None) -> torch.Tensor:
    """IMAGE [B, H, W, C] in 0..1 → [B, H·s, W·s, C'] on the CPU, s = the model's scale. Tiles are `tile` input
    pixels square, `overlap` apart; `progress(done, total)` is called after each tile (and may raise to stop)."""
    d = model.descriptor
    if images.shape[-1] < d.input_channels:
        raise ValueError(f"the image has {images.shape[-1]} channels, {model.name} takes {d.input_channels}")
    x = images[..., : d.input_channels].movedim(-1, 1).float().cpu()
    param = next(model.net.parameters())
    while True:
        try:
            fitted = max(_even_tile(side, tile, overlap) for side in x.shape[2:])
            return _tiled(d, x, param.device, param.dtype, fitted, overlap, progress).movedim(1, -1).clamp(0, 1)
        except torch.OutOfMemoryError:
            if tile // 2 <= overlap:
                raise
            tile //= 2  # ComfyUI's answer too: the same picture in smaller tiles


def _even_tile(size: int, tile: int, overlap: int) -> int:
    """The smallest tile that covers `size` with as few `tile`-sized tiles as it takes: a 640 px side is two
    336 px tiles, not two 512 px tiles overlapping by 384 (2.2× less work there, and less memory per tile)."""
    if size <= tile:
        return size
    count = math.ceil((size - overlap) / (tile - overlap))
    return math.ceil((size - overlap) / count) + overlap


def _tiled(descriptor, x: torch.Tensor, device, dtype, tile: int, overlap: int, progress) -> torch.Tensor:
    total = x.shape[0] * tile_count(x.shape[2], x.shape[3], tile, overlap)
    done = 0

    def run(window: torch.Tensor) -> torch.Tensor:
        nonlocal done
        out = descriptor(window.to(device, dtype)).float().cpu()
        done += 1
        if progress is not None:
            progress(done, total)
        return out

    return torch.cat([tiled_apply(run, x[i:i + 1], tile, overlap, descriptor.scale, descriptor.output_channels)
                      for i in range(x.shape[0])])


def write_demo_upscaler(folder, seed: int = 20240101) -> Path:
    """A tiny random-weight 4× ESRGAN (8 filters, 1 RRDB block) in the original ESRGAN layout (``model.0.weight``,
    ``model.1.sub.0.RDB1.conv1.0.weight``, … ``model.10.bias``), the layout of most shared ESRGAN files."""
    from spandrel.architectures.ESRGAN import ESRGAN

    from .demo import randomize

    net = randomize(ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4),
                    torch.Generator().manual_seed(seed))
    state = net.state_dict()
    state["model.10.bias"] = state["model.10.bias"] + 0.5  # centre the output in 0..1, so fewer pixels clip
    path = Path(folder) / DEMO_UPSCALER
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"latentgraph_demo": DEMO_NOTICE})
    return path
