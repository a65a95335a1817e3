"""The shipped image nodes, called through their declarations as the executor calls them."""
import hashlib
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from nodes.node import Context


def call(registry, env, name, prompt=None, extra=None, **values):
    ctx = Context(node_id="9", env=env, prompt=prompt or {}, extra_pnginfo=extra or {})
    return registry[name].call(ctx, values)


def test_load_image_rgba_mask_is_one_minus_alpha(registry, env):
    pixels = np.zeros((3, 5, 4), dtype=np.uint8)
    pixels[..., 0] = 255
    pixels[..., 3] = 255
    pixels[1, 2, 3] = 0
    Image.fromarray(pixels, "RGBA").save(os.path.join(env.input_dir, "a.png"))
    image, mask = call(registry, env, "LoadImage", image="a.png").outputs
    assert image.shape == (1, 3, 5, 3) and image.dtype == torch.float32
    assert torch.all(image[..., 0] == 1) and torch.all(image[..., 1:] == 0)
    assert mask.shape == (1, 3, 5) and mask[0, 1, 2] == 1 and mask.sum() == 1


def test_load_image_without_alpha_has_empty_64px_mask(registry, env):
    Image.new("RGB", (6, 4), (0, 128, 255)).save(os.path.join(env.input_dir, "b.jpg"), quality=100)
    image, mask = call(registry, env, "LoadImage", image="b.jpg").outputs
    assert image.shape == (1, 4, 6, 3) and mask.shape == (1, 64, 64) and mask.sum() == 0
    assert abs(image[0, 0, 0, 2].item() - 1.0) < 0.02


def test_load_image_choices_and_fingerprint(registry, env):
    spec = registry["LoadImage"]
    path = os.path.join(env.input_dir, "c.png")
    Image.new("RGB", (2, 2)).save(path)
    open(os.path.join(env.input_dir, "notes.txt"), "w").close()
    os.makedirs(os.path.join(env.input_dir, "uploads", "mask"))
    os.makedirs(os.path.join(env.input_dir, ".cache"))
    Image.new("RGB", (2, 2)).save(os.path.join(env.input_dir, "uploads", "mask", "d.webp"))
    Image.new("RGB", (2, 2)).save(os.path.join(env.input_dir, ".cache", "e.png"))
    assert spec.inputs["image"].options(env) == ["c.png", "uploads/mask/d.webp"]
    assert call(registry, env, "LoadImage", image="uploads/mask/d.webp").outputs[0].shape == (1, 2, 2, 3)
    os.remove(os.path.join(env.input_dir, "uploads", "mask", "d.webp"))
    assert spec.schema(env)["input"]["required"]["image"] == [["c.png"], {"image_upload": True,
                                                                         "tooltip": "a file in the input folder"}]
    with open(path, "rb") as f:
        assert spec.fingerprint({"image": "c.png"}, env) == hashlib.sha256(f.read()).hexdigest()


def test_load_image_errors_name_the_file(registry, env):
    with pytest.raises(FileNotFoundError, match="'gone.png' not found"):
        call(registry, env, "LoadImage", image="gone.png")
    with pytest.raises(ValueError, match="outside"):
        call(registry, env, "LoadImage", image="../../etc/passwd")


def test_empty_image_colour(registry, env):
    (image,) = call(registry, env, "EmptyImage", width=5, height=3, batch_size=2, color=0xFF8000).outputs
    assert image.shape == (2, 3, 5, 3)
    assert image[1, 2, 4].tolist() == pytest.approx([1.0, 128 / 255, 0.0])


def test_image_scale_sizes_and_crop(registry, env):
    image = torch.rand(1, 20, 40, 3)
    (out,) = call(registry, env, "ImageScale", image=image, upscale_method="bilinear", width=10, height=0,
                  crop="disabled").outputs
    assert out.shape == (1, 5, 10, 3)
    image[:, :, :10] = 0  # the centre crop to a square drops the first and last 10 columns
    image[:, :, 30:] = 0
    (out,) = call(registry, env, "ImageScale", image=image, upscale_method="area", width=20, height=20,
                  crop="center").outputs
    assert out.shape == (1, 20, 20, 3) and out.min() > 0
    for method in ("nearest-exact", "bicubic", "lanczos"):
        (out,) = call(registry, env, "ImageScale", image=image, upscale_method=method, width=7, height=9,
                      crop="disabled").outputs
        assert out.shape == (1, 9, 7, 3) and 0 <= out.min() and out.max() <= 1
    (out,) = call(registry, env, "ImageScaleBy", image=image, upscale_method="nearest-exact", scale_by=0.5).outputs
    assert out.shape == (1, 10, 20, 3)


def test_image_crop_is_clipped_to_the_picture(registry, env):
    image = torch.arange(4 * 6, dtype=torch.float32).reshape(1, 4, 6, 1).expand(1, 4, 6, 3)
    (out,) = call(registry, env, "ImageCrop", image=image, width=3, height=2, x=1, y=1).outputs
    assert out[0, :, :, 0].tolist() == [[7, 8, 9], [13, 14, 15]]
    (out,) = call(registry, env, "ImageCrop", image=image, width=10, height=10, x=100, y=100).outputs
    assert out.shape == (1, 1, 1, 3)


def test_invert(registry, env):
    image = torch.rand(2, 3, 3, 3)
    (out,) = call(registry, env, "ImageInvert", image=image).outputs
    assert torch.allclose(out, 1 - image)


def test_save_image_writes_metadata_and_counts(registry, env):
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {}}}
    workflow = {"nodes": [], "links": [], "version": 0.4}
    images = torch.zeros(2, 4, 4, 3)
    images[1] = 1.0
    result = call(registry, env, "SaveImage", prompt=prompt, extra={"workflow": workflow}, images=images,
                  filename_prefix="run/pic")
    assert result.ui == {"images": [{"filename": "pic_00001_.png", "subfolder": "run", "type": "output"},
                                    {"filename": "pic_00002_.png", "subfolder": "run", "type": "output"}]}
    with Image.open(os.path.join(env.output_dir, "run", "pic_00002_.png")) as img:
        assert json.loads(img.text["prompt"]) == prompt and json.loads(img.text["workflow"]) == workflow
        assert np.asarray(img).min() == 255
    again = call(registry, env, "SaveImage", images=images[:1], filename_prefix="run/pic")
    assert again.ui["images"][0]["filename"] == "pic_00003_.png"
    with pytest.raises(ValueError, match="outside"):
        call(registry, env, "SaveImage", images=images, filename_prefix="../escape")


def test_save_image_never_overwrites_a_file_another_worker_saved_meanwhile(registry, env, monkeypatch):
    from nodes.library import image as image_nodes

    first = call(registry, env, "SaveImage", images=torch.zeros(1, 4, 4, 3), filename_prefix="pic")
    # another worker saving into the folder counted the files before this one's file was there
    monkeypatch.setattr(image_nodes, "_next_counter", lambda folder, base: 1)
    second = call(registry, env, "SaveImage", images=torch.ones(2, 4, 4, 3), filename_prefix="pic")
    assert first.ui["images"][0]["filename"] == "pic_00001_.png"
    assert [i["filename"] for i in second.ui["images"]] == ["pic_00002_.png", "pic_00003_.png"]
    with Image.open(os.path.join(env.output_dir, "pic_00001_.png")) as img:
        assert np.asarray(img).max() == 0  # the first file is intact


def test_preview_goes_to_temp(registry, env):
    result = call(registry, env, "PreviewImage", images=torch.zeros(1, 2, 2, 3))
    (entry,) = result.ui["images"]
    assert entry["type"] == "temp" and entry["filename"].startswith("ComfyUI_temp_")
    assert os.path.isfile(os.path.join(env.temp_dir, entry["filename"]))


def test_primitives_and_int_math(registry, env):
    assert call(registry, env, "PrimitiveInt", value=5).outputs == (5,)
    assert call(registry, env, "PrimitiveStringMultiline", value="a\nb").outputs == ("a\nb",)
    assert call(registry, env, "PrimitiveBoolean", value=True).outputs == (True,)
    assert call(registry, env, "PrimitiveFloat", value=0.5).outputs == (0.5,)
    assert call(registry, env, "IntMath", a=7, b=2, operation="modulo").outputs == (1,)
    assert registry["PrimitiveInt"].schema()["input"]["required"]["value"][1]["control_after_generate"] is True
    assert registry["PrimitiveString"].schema()["category"] == "utils/primitive"


def test_filename_prefix_tokens(registry, env):
    import datetime

    from nodes.library.image import expand_prefix

    prompt = {"3": {"class_type": "EmptyImage", "inputs": {"width": 640, "image": ["1", 0]}, "_meta": {"title": "Canvas"}}}
    now = datetime.datetime(2026, 1, 2, 3, 4, 5)
    assert expand_prefix("%date:yyyy-MM-dd%/img_%Canvas.width%", prompt, now) == "2026-01-02/img_640"
    assert expand_prefix("%date%_%EmptyImage.width%_%3.width%", prompt, now) == "20260102030405_640_640"
    assert expand_prefix("%Canvas.image%_%Nope.x%", prompt, now) == "%Canvas.image%_%Nope.x%"
    result = call(registry, env, "SaveImage", prompt=prompt, images=torch.zeros(1, 2, 2, 3),
                  filename_prefix="w%Canvas.width%")
    assert result.ui["images"][0]["filename"] == "w640_00001_.png"
