"""Image work the routes do (check an upload, merge a mask, re-encode a preview, read a PNG's workflow), each
refusing an image larger than MAX_IMAGE_PIXELS before decoding it. A 140 KB PNG can declare 12000×12000 pixels
(576 MB once decoded as RGBA); the routes run these functions off the event loop, on a small pool (State.heavy),
so neither the loop nor memory pays for more than a few at a time."""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .limits import MAX_IMAGE_PIXELS, TooLarge

PREVIEW_FORMATS = ("webp", "jpeg")
CHANNELS = ("rgba", "rgb", "a")


class NotAnImage(ValueError):
    """Bytes or a file that Pillow cannot read as an image."""


def open_image(source: bytes | Path) -> Image.Image:
    """Open an image (headers only) and refuse it if its pixel count is past the bound."""
    try:
        img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Image.DecompressionBombError as exc:  # Pillow's own, larger bound
        raise TooLarge(f"the image is too large to decode: {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise NotAnImage(f"not an image Pillow can read ({type(exc).__name__})") from None
    width, height = img.size
    if width * height > MAX_IMAGE_PIXELS:
        img.close()
        raise TooLarge(f"the image is {width}×{height} = {width * height:,} pixels; the server accepts at most "
                       f"{MAX_IMAGE_PIXELS:,} (8192×8192)")
    return img


def check_upload(data: bytes) -> None:
    """An uploaded file must be a readable image within the pixel bound."""
    with open_image(data) as img:
        try:
            img.verify()
        except Exception as exc:  # verify() raises whatever the format's plugin raises on corrupt data
            raise NotAnImage(f"the image data is corrupt ({type(exc).__name__})") from None


def merge_mask(original: Path, mask: bytes) -> bytes:
    """/upload/mask: the original image with the mask's alpha channel as its own, as a PNG."""
    with open_image(original) as base, open_image(mask) as alpha:
        try:
            merged = base.convert("RGBA")
            merged.putalpha(alpha.convert("RGBA").getchannel("A").resize(merged.size))
            buf = io.BytesIO()
            merged.save(buf, format="PNG")
        except (OSError, ValueError, SyntaxError) as exc:
            raise NotAnImage(f"could not merge the mask ({type(exc).__name__}: {exc})") from None
    return buf.getvalue()


def reencode(path: Path, fmt: str, quality: int, channel: str) -> bytes:
    """/view's re-encoding: ``fmt`` png, webp or jpeg; ``channel`` rgba, rgb or a (the alpha alone)."""
    with open_image(path) as img:
        try:
            img = img.convert("RGBA")
            if channel == "rgb" or fmt == "jpeg":
                img = img.convert("RGB")
            if channel == "a":
                alpha = img.getchannel("A")
                img = Image.new("RGBA", img.size, (0, 0, 0, 0))
                img.putalpha(alpha)
            buf = io.BytesIO()
            img.save(buf, format=fmt.upper(), **({"quality": quality} if fmt != "png" else {}))
        except (OSError, ValueError, SyntaxError) as exc:
            raise NotAnImage(f"{path.name} could not be re-encoded ({type(exc).__name__})") from None
    return buf.getvalue()


def png_text(data: bytes) -> tuple[str, str] | None:
    """The text chunk SaveImage embeds its workflow in, as (key, JSON text): `workflow` (UI), else `prompt` (API);
    None when the PNG has neither."""
    with open_image(data) as img:
        try:
            text = dict(getattr(img, "text", None) or {})  # reads chunks after the pixels too (decoding them)
        except (OSError, ValueError, SyntaxError) as exc:
            raise NotAnImage(f"the PNG is corrupt ({type(exc).__name__})") from None
    return next(((key, text[key]) for key in ("workflow", "prompt") if key in text), None)
