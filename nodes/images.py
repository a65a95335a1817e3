"""Pixels in and out: PIL ↔ IMAGE tensors, resizing with ComfyUI's methods, PNG writing with text chunks.

IMAGE tensors are float [B, H, W, C] in 0..1 (see nodes.types); these helpers keep that layout at the edges."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, PngImagePlugin

UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
CROP_METHODS = ["disabled", "center"]


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """An RGB(A)/L PIL image → float [H, W, C] in 0..1."""
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)


def tensor_to_pil(img: torch.Tensor) -> Image.Image:
    """Float [H, W, C] in 0..1 → 8-bit PIL image (rounded, not truncated, so invert(invert(x)) == x)."""
    arr = (img.detach().float().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()
    if arr.shape[-1] == 1:
        arr = arr[..., 0]
    return Image.fromarray(arr)


def target_size(height: int, width: int, new_width: int, new_height: int) -> tuple[int, int]:
    """ComfyUI's rule for a 0 dimension: keep the aspect ratio from the other one (both 0 = unchanged)."""
    if new_width == 0 and new_height == 0:
        return width, height
    if new_width == 0:
        new_width = max(1, round(width * new_height / height))
    elif new_height == 0:
        new_height = max(1, round(height * new_width / width))
    return new_width, new_height


def center_crop_to_aspect(images: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Trim [B, H, W, C] equally from both sides so its aspect ratio matches width/height."""
    _, h, w, _ = images.shape
    old, new = w / h, width / height
    if old > new:
        keep = max(1, round(w * new / old))
        x = (w - keep) // 2
        return images[:, :, x:x + keep]
    if old < new:
        keep = max(1, round(h * old / new))
        y = (h - keep) // 2
        return images[:, y:y + keep]
    return images


def resize(images: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled") -> torch.Tensor:
    """Resize [B, H, W, C] to height×width with one of UPSCALE_METHODS, optionally centre-cropping first."""
    if method not in UPSCALE_METHODS:
        raise ValueError(f"unknown upscale method {method!r}; choose from {UPSCALE_METHODS}")
    if crop == "center":
        images = center_crop_to_aspect(images, width, height)
    if images.shape[1] == height and images.shape[2] == width:
        return images
    if method == "lanczos":
        return torch.stack([pil_to_tensor(tensor_to_pil(im).resize((width, height), Image.Resampling.LANCZOS))
                            .reshape(height, width, -1) for im in images])
    x = images.movedim(-1, 1)
    kwargs = {"align_corners": False} if method in ("bilinear", "bicubic") else {}
    out = F.interpolate(x, size=(height, width), mode=method, **kwargs)
    return out.movedim(1, -1).clamp(0, 1)


def save_png(path: str, img: torch.Tensor, text: dict[str, str], compress_level: int = 4) -> None:
    """Write one [H, W, C] image with tEXt chunks (the `prompt` / `workflow` JSON ComfyUI readers expect) to a new
    file; FileExistsError if `path` exists (another process saving into the folder took the name first)."""
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    pil = tensor_to_pil(img)
    with open(path, "xb") as f:
        pil.save(f, format="PNG", pnginfo=info, compress_level=compress_level)
