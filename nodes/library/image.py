"""Image nodes under ComfyUI's names: load, make, scale, crop, invert, save and preview pictures."""
from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import random
import re
import string

import torch
from PIL import Image, ImageOps, ImageSequence

from ..images import CROP_METHODS, UPSCALE_METHODS, pil_to_tensor, resize, save_png, target_size
from ..node import Input, Output, Result, node
from ..types import IMAGE, MASK

MAX_RESOLUTION = 16384
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def input_images(env) -> list[str]:
    """Image files in the input folder and its subfolders ('sub/x.png', as uploads with a subfolder are
    named): the choices of LoadImage's combo. Hidden folders are skipped."""
    folder = env.input_dir
    if not folder or not os.path.isdir(folder):
        return []
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = os.path.relpath(root, folder)
        found += [f if rel == "." else f"{rel.replace(os.sep, '/')}/{f}"
                  for f in files if f.lower().endswith(_IMAGE_EXTENSIONS)]
    return sorted(found)


def _inside(folder: str, name: str) -> str:
    """Join a user-given name to a folder, refusing anything that escapes it ('../', absolute paths)."""
    root = os.path.realpath(folder)
    path = os.path.realpath(os.path.join(root, name))
    if os.path.commonpath([root, path]) != root:
        raise ValueError(f"{name!r} points outside {folder}")
    return path


# ComfyUI's mask editor and "open image" menu name files as "sub/x.png [input]", "[output]" or "[temp]"
_ANNOTATED = re.compile(r"(.+) \[(input|output|temp)\]")
_DEFAULT_FOLDERS = {"input": ".", "output": "output", "temp": "temp"}


def image_file(env, name: str) -> tuple[str, str]:
    """(path, folder) of an image name: in the input folder, or in the folder its annotation names."""
    match = _ANNOTATED.fullmatch(name)
    kind, name = (match.group(2), match.group(1)) if match else ("input", name)
    folder = getattr(env, f"{kind}_dir") or _DEFAULT_FOLDERS[kind]
    return _inside(folder, name), folder


def annotated_image_exists(name: str, env) -> bool:
    """True for an annotated name of an existing file: valid though the input folder's list cannot show it."""
    if not _ANNOTATED.fullmatch(name):
        return False
    try:
        return os.path.isfile(image_file(env, name)[0])
    except ValueError:
        return False


def file_digest(env, name: str) -> str | None:
    """The image file's sha256: the same name can hold new pixels, so loaders key the cache on the bytes."""
    try:
        with open(image_file(env, name)[0], "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except (OSError, ValueError):
        return None  # run() reports the missing file with the node's name


def existing_image(env, name: str, what: str) -> str:
    path, folder = image_file(env, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: image {name!r} not found in {folder}")
    return path


@node(category="image", outputs=[Output(IMAGE), Output(MASK)], display_name="Load Image", version="1.0.0")
class LoadImage:
    """Load a picture from the input folder; the mask is 1 − alpha (all zeros, 64×64, without alpha). ComfyUI's
    annotated names ("clipspace/x.png [input]", "x.png [output]", "x.png [temp]", as its mask editor saves them)
    read from the folder they name."""
    image: str = Input(choices=input_images, also_accepts=annotated_image_exists, image_upload=True,
                       description="a file in the input folder")

    @classmethod
    def fingerprint(cls, values, env):
        return file_digest(env, values["image"])

    def run(self, ctx):
        path = existing_image(ctx.env, self.image, "LoadImage")
        with Image.open(path) as img:
            images, alphas = [], []
            for frame in ImageSequence.Iterator(img):
                frame = ImageOps.exif_transpose(frame)
                if frame.mode == "I":  # 16-bit greyscale
                    frame = frame.point(lambda v: v * (1 / 255))
                if images and frame.size != (images[0].shape[1], images[0].shape[0]):
                    continue  # ComfyUI skips animation frames of another size too
                images.append(pil_to_tensor(frame.convert("RGB")))
                alphas.append(_alpha(frame))
        image = torch.stack(images)
        if all(a is None for a in alphas):
            mask = torch.zeros(len(images), 64, 64)
        else:
            mask = torch.stack([1.0 - a if a is not None else torch.zeros(image.shape[1:3]) for a in alphas])
        return image, mask


def _alpha(frame: Image.Image) -> torch.Tensor | None:
    if "A" in frame.getbands():
        return pil_to_tensor(frame.getchannel("A"))
    if frame.mode == "P" and "transparency" in frame.info:
        return pil_to_tensor(frame.convert("RGBA").getchannel("A"))
    return None


@node(category="image", outputs=[Output(IMAGE)], display_name="EmptyImage", version="1.0.0")
class EmptyImage:
    """A batch of images filled with one colour (0xRRGGBB)."""
    width: int = Input(default=512, min=1, max=MAX_RESOLUTION, step=1)
    height: int = Input(default=512, min=1, max=MAX_RESOLUTION, step=1)
    batch_size: int = Input(default=1, min=1, max=4096)
    color: int = Input(default=0, min=0, max=0xFFFFFF, step=1, display="color")

    def run(self, ctx):
        rgb = torch.tensor([(self.color >> 16) & 0xFF, (self.color >> 8) & 0xFF, self.color & 0xFF]) / 255.0
        return (rgb.expand(self.batch_size, self.height, self.width, 3).clone(),)


@node(category="image/upscaling", outputs=[Output(IMAGE)], display_name="Upscale Image", version="1.0.0")
class ImageScale:
    """Resize to width×height (0 keeps the aspect ratio from the other side), optionally centre-cropping first."""
    image: IMAGE = Input()
    upscale_method: str = Input(default="nearest-exact", choices=UPSCALE_METHODS)
    width: int = Input(default=512, min=0, max=MAX_RESOLUTION, step=1)
    height: int = Input(default=512, min=0, max=MAX_RESOLUTION, step=1)
    crop: str = Input(default="disabled", choices=CROP_METHODS)

    def run(self, ctx):
        _, h, w, _ = self.image.shape
        width, height = target_size(h, w, self.width, self.height)
        return (resize(self.image, width, height, self.upscale_method, self.crop),)


@node(category="image/upscaling", outputs=[Output(IMAGE)], display_name="Upscale Image By", version="1.0.0")
class ImageScaleBy:
    """Resize by a factor."""
    image: IMAGE = Input()
    upscale_method: str = Input(default="nearest-exact", choices=UPSCALE_METHODS)
    scale_by: float = Input(default=1.0, min=0.01, max=8.0, step=0.01)

    def run(self, ctx):
        _, h, w, _ = self.image.shape
        width, height = max(1, round(w * self.scale_by)), max(1, round(h * self.scale_by))
        return (resize(self.image, width, height, self.upscale_method),)


@node(category="image/upscaling", outputs=[Output(IMAGE)], display_name="Scale Image to Total Pixels", version="1.0.0")
class ImageScaleToTotalPixels:
    """Resize to about `megapixels` × 1024² pixels keeping the aspect ratio; each side is rounded to a multiple of
    `resolution_steps`."""
    image: IMAGE = Input()
    upscale_method: str = Input(default="nearest-exact", choices=UPSCALE_METHODS)
    megapixels: float = Input(default=1.0, min=0.01, max=16.0, step=0.01)
    resolution_steps: int = Input(default=1, min=1, max=256, description="each side becomes a multiple of this")

    def run(self, ctx):
        _, h, w, _ = self.image.shape
        scale = math.sqrt(self.megapixels * 1024 * 1024 / (w * h))
        step = self.resolution_steps
        width, height = (max(step, round(side * scale / step) * step) for side in (w, h))
        return (resize(self.image, width, height, self.upscale_method),)


@node(category="image/transform", outputs=[Output(IMAGE)], display_name="Image Crop", version="1.0.0")
class ImageCrop:
    """Cut out a width×height window at (x, y); the window is clipped to the picture."""
    image: IMAGE = Input()
    width: int = Input(default=512, min=1, max=MAX_RESOLUTION, step=1)
    height: int = Input(default=512, min=1, max=MAX_RESOLUTION, step=1)
    x: int = Input(default=0, min=0, max=MAX_RESOLUTION, step=1)
    y: int = Input(default=0, min=0, max=MAX_RESOLUTION, step=1)

    def run(self, ctx):
        _, h, w, _ = self.image.shape
        x, y = min(self.x, w - 1), min(self.y, h - 1)
        return (self.image[:, y:y + self.height, x:x + self.width, :],)


@node(category="image", outputs=[Output(IMAGE)], display_name="Invert Image", version="1.0.0")
class ImageInvert:
    """Invert the colours."""
    image: IMAGE = Input(description="the picture to invert")

    def run(self, ctx):
        return (1.0 - self.image,)


def _png_text(ctx) -> dict[str, str]:
    """The metadata every saved PNG carries: the API prompt and each extra_pnginfo entry (normally `workflow`)."""
    text = {"prompt": json.dumps(ctx.prompt)} if ctx.prompt else {}
    for key, value in ctx.extra_pnginfo.items():
        text[key] = json.dumps(value)
    return text


_TOKEN = re.compile(r"%([^%/\\]+)%")
_DATE_PARTS = (("yyyy", "%Y"), ("yy", "%y"), ("MM", "%m"), ("dd", "%d"), ("hh", "%H"), ("mm", "%M"), ("ss", "%S"))


def expand_prefix(prefix: str, prompt: dict, now: datetime.datetime | None = None) -> str:
    """ComfyUI's filename_prefix tokens: ``%date:yyyy-MM-dd%`` (also ``hh mm ss``; bare ``%date%`` =
    yyyyMMddhhmmss) and ``%Node.input%`` — a constant input of the node with that title, class or id."""
    now = now or datetime.datetime.now()

    def replace(match: re.Match) -> str:
        body = match.group(1)
        if body == "date" or body.startswith("date:"):
            fmt = body[5:] or "yyyyMMddhhmmss"
            for token, code in _DATE_PARTS:
                fmt = fmt.replace(token, code)
            return now.strftime(fmt)
        name, _, widget = body.rpartition(".")
        for node_id, entry in prompt.items():
            if name in (node_id, (entry.get("_meta") or {}).get("title"), entry.get("class_type")):
                value = (entry.get("inputs") or {}).get(widget)
                if value is not None and not isinstance(value, (list, dict)):
                    return str(value)
        return match.group(0)  # unknown token: kept as typed, like ComfyUI

    return _TOKEN.sub(replace, prefix)


def _next_counter(folder: str, base: str) -> int:
    pattern = re.compile(re.escape(base) + r"_(\d{5,})_\.png$")
    found = [int(m.group(1)) for f in os.listdir(folder) if (m := pattern.match(f))]
    return max(found, default=0) + 1


def _save_batch(ctx, images, folder: str, prefix: str, kind: str, compress_level: int) -> Result:
    path = _inside(folder, expand_prefix(prefix, ctx.prompt))
    subfolder = os.path.relpath(os.path.dirname(path), os.path.realpath(folder))
    subfolder = "" if subfolder == "." else subfolder
    base = os.path.basename(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    text = _png_text(ctx)
    counter = _next_counter(os.path.dirname(path), base)
    saved = []
    for i, image in enumerate(images):
        while True:  # workers on other devices (or Ray actors) may save into the same folder at the same moment
            filename = f"{base}_{counter:05}_.png"
            counter += 1
            try:
                save_png(os.path.join(os.path.dirname(path), filename), image, text, compress_level)
                break
            except FileExistsError:
                continue
        saved.append({"filename": filename, "subfolder": subfolder, "type": kind})
        ctx.progress(i + 1, len(images))
    return Result(ui={"images": saved})


@node(category="image", output_node=True, display_name="Save Image",
      hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}, version="1.0.0")
class SaveImage:
    """Write the images as PNGs into the output folder, with the workflow embedded so they load back as graphs."""
    images: IMAGE = Input(description="the images to save")
    filename_prefix: str = Input(default="ComfyUI", description="file name start; may include a subfolder ('run1/img'),"
                                 " %date:yyyy-MM-dd% and %Node.input% (a node's title, class or id)")

    def run(self, ctx):
        return _save_batch(ctx, self.images, ctx.env.output_dir or "output", self.filename_prefix, "output", 4)


@node(category="image", output_node=True, display_name="Preview Image",
      hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}, version="1.0.0")
class PreviewImage:
    """Show the images without keeping them: they go to the temporary folder."""
    images: IMAGE = Input()

    def run(self, ctx):
        return preview(ctx, self.images)


def preview(ctx, images) -> Result:
    """Images written to the temporary folder for the UI to show (fast PNG compression, a random name)."""
    prefix = "ComfyUI_temp_" + "".join(random.choices(string.ascii_lowercase, k=5))
    return _save_batch(ctx, images, ctx.env.temp_dir or "temp", prefix, "temp", 1)
