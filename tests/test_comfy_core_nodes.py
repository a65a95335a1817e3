"""ComfyUI's core image, latent, mask and conditioning nodes (issue 18 item 5): each node's behaviour, called through
its declaration as the executor calls it, against hand-computed values or an independent reference (scipy's grey
morphology, Pillow's blend modes); their widget layout in saved workflows; all of them together in one graph run
by `latentgraph run`, and a real ComfyUI template made of them."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image, ImageChops
from sdxl_helpers import cli, demo_models_dir, environment
from template_helpers import load_template

from nodes.node import Context
from server.graph import ui_to_api, validate

NEW_NODES = ["MaskPreview", "ImageBlend", "ImagePadForOutpaint", "ImageScaleToTotalPixels", "ImageBatch", "LatentComposite",
             "LatentCompositeMasked", "SetLatentNoiseMask", "RepeatLatentBatch", "LatentFromBatch", "LatentBlend",
             "LoadImageMask", "ImageToMask", "MaskToImage", "InvertMask", "GrowMask", "FeatherMask", "ThresholdMask",
             "ConditioningAverage", "UpscaleModelLoader", "ImageUpscaleWithModel"]


def call(registry, name, env=None, **values):
    return registry[name].call(Context(node_id="9", env=env), values).outputs


def latent(*shape, value=0.0, **extra):
    return {"samples": torch.full(shape, value), **extra}


# -- images ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode, pil", [("multiply", ImageChops.multiply), ("screen", ImageChops.screen),
                                       ("overlay", ImageChops.overlay)])
def test_image_blend_modes_match_pillow(registry, mode, pil):
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (9, 11, 3), dtype=np.uint8) for _ in range(2))
    want = np.asarray(pil(Image.fromarray(a), Image.fromarray(b)), dtype=np.float32) / 255
    t = [torch.from_numpy(x.astype(np.float32) / 255)[None] for x in (a, b)]
    (full,) = call(registry, "ImageBlend", image1=t[0], image2=t[1], blend_factor=1.0, blend_mode=mode)
    assert np.abs(full[0].numpy() - want).max() <= 1 / 255 + 1e-6  # Pillow works in 8 bits
    (half,) = call(registry, "ImageBlend", image1=t[0], image2=t[1], blend_factor=0.25, blend_mode=mode)
    torch.testing.assert_close(half, t[0] * 0.75 + full * 0.25)


def test_image_blend_soft_light_difference_and_resizing(registry):
    a = torch.tensor([0.5, 0.16, 0.64, 0.2, 0.7]).reshape(1, 1, 5, 1).expand(1, 1, 5, 3)
    b = torch.tensor([0.25, 0.75, 1.0, 0.5, 0.2]).reshape(1, 1, 5, 1).expand(1, 1, 5, 3)
    (soft,) = call(registry, "ImageBlend", image1=a, image2=b, blend_factor=1.0, blend_mode="soft_light")
    # W3C soft light: b ≤ ½: a − (1 − 2b)·a(1 − a); else a + (2b − 1)(D(a) − a), D(a) = ((16a − 12)a + 4)a if a ≤ ¼
    torch.testing.assert_close(soft[0, 0, :3, 0], torch.tensor([0.375, 0.279168, 0.8]))
    (diff,) = call(registry, "ImageBlend", image1=a, image2=b, blend_factor=1.0, blend_mode="difference")
    assert diff[0, 0, 3:, 0].tolist() == pytest.approx([0.0, 0.5])  # ComfyUI's image1 − image2, clipped
    (same,) = call(registry, "ImageBlend", image1=a, image2=torch.rand(2, 7, 9, 3), blend_factor=0.0,
                   blend_mode="normal")
    assert torch.equal(same, a.expand(2, 1, 5, 3))  # image2 was fitted to image1's size


def test_pad_for_outpaint_grey_canvas_and_feathered_mask(registry):
    image = torch.full((2, 20, 24, 3), 0.2)
    padded, mask = call(registry, "ImagePadForOutpaint", image=image, left=8, top=0, right=16, bottom=4,
                        feathering=5)
    assert padded.shape == (2, 24, 48, 3) and mask.shape == (1, 24, 48)
    assert torch.all(padded[:, :20, 8:32] == 0.2) and torch.all(padded[:, 20:] == 0.5) and torch.all(padded[:, :, :8] == 0.5)
    inner = mask[0, :20, 8:32]
    assert torch.all(mask[0, 20:] == 1) and torch.all(mask[0, :, :8] == 1) and torch.all(mask[0, :, 32:] == 1)
    # ((f − d) / f)²: d counts from 0 at the left edge and from 1 at the right and bottom ones; top was not padded
    assert inner[10, 0] == 1 and inner[10, 1] == pytest.approx(0.64) and inner[10, 23] == pytest.approx(0.64)
    assert inner[19, 12] == pytest.approx(0.64) and inner[0, 12] == 0 and inner[10, 12] == 0
    _, wide = call(registry, "ImagePadForOutpaint", image=image, left=8, top=0, right=0, bottom=0, feathering=10)
    assert torch.all(wide[0, :, 8:] == 0)  # feathering ≥ half the height: no feathering at all


@pytest.mark.parametrize("steps, size", [(1, (591, 443)), (64, (576, 448))])
def test_scale_to_total_pixels(registry, steps, size):
    (out,) = call(registry, "ImageScaleToTotalPixels", image=torch.rand(1, 480, 640, 3),
                  upscale_method="nearest-exact", megapixels=0.25, resolution_steps=steps)
    assert (out.shape[2], out.shape[1]) == size


def test_image_batch_fits_the_second_batch_to_the_first(registry):
    first, second = torch.rand(1, 16, 16, 3), torch.rand(2, 8, 12, 3)
    (out,) = call(registry, "ImageBatch", image1=first, image2=second)
    assert out.shape == (3, 16, 16, 3) and torch.equal(out[:1], first)
    with pytest.raises(ValueError, match="image1 has 3 channels and image2 4"):
        call(registry, "ImageBatch", image1=first, image2=torch.rand(1, 16, 16, 4))


# -- latents (16 channels: nothing assumes SDXL's 4) -------------------------------------------------------------

def test_latent_composite_feathers_only_inner_edges(registry):
    (out,) = call(registry, "LatentComposite", samples_to=latent(1, 16, 8, 8, noise_mask=torch.ones(1, 1, 8, 8)),
                  samples_from=latent(1, 16, 4, 4, value=1.0), x=16, y=16, feather=16)
    s = out["samples"][0, 0]
    assert out["samples"].shape == (1, 16, 8, 8) and "noise_mask" in out
    assert s[2, 2] == 0.25 and s[2, 3] == 0.5 and s[3, 3] == 1 and s[5, 5] == 0.25 and s[1].sum() == 0
    (corner,) = call(registry, "LatentComposite", samples_to=latent(1, 16, 8, 8),
                     samples_from=latent(1, 16, 4, 4, value=1.0), x=0, y=0, feather=16)
    assert corner["samples"][0, 0, 0, 0] == 1 and corner["samples"][0, 0, 3, 3] == 0.25  # image border: sharp
    (clipped,) = call(registry, "LatentComposite", samples_to=latent(1, 16, 8, 8),
                      samples_from=latent(1, 16, 4, 4, value=1.0), x=48, y=48, feather=0)
    assert clipped["samples"][0, 0].sum() == 4  # only the 2×2 cells that fit


def test_latent_composite_masked_pastes_through_a_pixel_mask(registry):
    mask = torch.zeros(1, 32, 32)
    mask[:, :, :16] = 1
    (out,) = call(registry, "LatentCompositeMasked", destination=latent(2, 16, 8, 8),
                  source=latent(1, 16, 4, 4, value=1.0), x=8, y=0, resize_source=False, mask=mask)
    s = out["samples"]
    assert s.shape == (2, 16, 8, 8) and torch.all(s[:, :, :4, 1:3] == 1) and s.sum() == 2 * 16 * 4 * 2
    (whole,) = call(registry, "LatentCompositeMasked", destination=latent(1, 16, 8, 8),
                    source=latent(1, 16, 2, 2, value=1.0), x=0, y=0, resize_source=True)
    assert torch.all(whole["samples"] == 1)
    with pytest.raises(ValueError, match="destination has 16 latent channels and source 4"):
        call(registry, "LatentCompositeMasked", destination=latent(1, 16, 8, 8), source=latent(1, 4, 8, 8), x=0, y=0,
             resize_source=False)


def test_set_latent_noise_mask_and_batch_nodes(registry):
    (masked,) = call(registry, "SetLatentNoiseMask", samples=latent(2, 16, 4, 4), mask=torch.ones(32, 32))
    assert masked["noise_mask"].shape == (1, 1, 32, 32)
    source = latent(2, 16, 4, 4, batch_index=[3, 4], noise_mask=torch.rand(2, 1, 32, 32))
    source["samples"][1] = 1.0
    (repeated,) = call(registry, "RepeatLatentBatch", samples=source, amount=3)
    assert repeated["samples"][:, 0, 0, 0].tolist() == [0, 1, 0, 1, 0, 1]
    assert repeated["batch_index"] == [3, 4, 5, 6, 7, 8]  # each copy gets noise of its own
    assert torch.equal(repeated["noise_mask"][4:], source["noise_mask"])
    (one,) = call(registry, "LatentFromBatch", samples=repeated, batch_index=3, length=2)
    assert one["samples"][:, 0, 0, 0].tolist() == [1, 0] and one["batch_index"] == [6, 7]
    assert torch.equal(one["noise_mask"], source["noise_mask"].flip(0))
    (tail,) = call(registry, "LatentFromBatch", samples=latent(5, 16, 4, 4), batch_index=60, length=64)
    assert tail["samples"].shape[0] == 1 and tail["batch_index"] == [4]  # clipped to the batch
    assert "batch_index" not in call(registry, "RepeatLatentBatch", samples=latent(1, 16, 4, 4), amount=2)[0]


def test_latent_blend_weights_samples1(registry):
    (out,) = call(registry, "LatentBlend", samples1=latent(1, 16, 8, 8, value=1.0),
                  samples2=latent(1, 16, 4, 6, value=0.0), blend_factor=0.3)
    assert out["samples"].shape == (1, 16, 8, 8) and torch.allclose(out["samples"], torch.tensor(0.3))


# -- masks -------------------------------------------------------------------------------------------------------

def test_load_image_mask_channels_and_annotated_names(registry, env):
    pixels = np.zeros((4, 6, 4), dtype=np.uint8)
    pixels[..., 0] = 51
    pixels[..., 3] = 255
    pixels[1, 2, 3] = 0
    Image.fromarray(pixels, "RGBA").save(os.path.join(env.input_dir, "m.png"))
    (alpha,) = call(registry, "LoadImageMask", env, image="m.png", channel="alpha")
    assert alpha.shape == (1, 4, 6) and alpha[0, 1, 2] == 1 and alpha.sum() == 1  # 1 − alpha
    (red,) = call(registry, "LoadImageMask", env, image="m.png", channel="red")
    assert torch.allclose(red, torch.tensor(0.2))
    os.makedirs(os.path.join(env.output_dir, "run"))
    Image.new("L", (3, 2), 128).save(os.path.join(env.output_dir, "run", "g.png"))
    (grey,) = call(registry, "LoadImageMask", env, image="run/g.png [output]", channel="green")
    assert grey.shape == (1, 2, 3) and torch.allclose(grey, torch.tensor(128 / 255))


def test_image_mask_conversions_invert_and_threshold(registry):
    image = torch.rand(2, 5, 7, 3)
    (green,) = call(registry, "ImageToMask", image=image, channel="green")
    assert torch.equal(green, image[..., 1])
    with pytest.raises(ValueError, match="'alpha': the image has only 3 channels"):
        call(registry, "ImageToMask", image=image, channel="alpha")
    (back,) = call(registry, "MaskToImage", mask=green)
    assert back.shape == (2, 5, 7, 3) and torch.equal(back[..., 2], green)
    (inverted,) = call(registry, "InvertMask", mask=green)
    assert torch.equal(inverted, 1 - green)
    (hard,) = call(registry, "ThresholdMask", mask=torch.tensor([[[0.2, 0.5, 0.51]]]), value=0.5)
    assert hard.tolist() == [[[0.0, 0.0, 1.0]]]


@pytest.mark.parametrize("expand", [3, -2])
@pytest.mark.parametrize("tapered", [True, False])
def test_grow_mask_matches_scipy_grey_morphology(registry, expand, tapered):
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(1)
    mask = (rng.random((2, 13, 15)) > 0.8).astype(np.float32) * rng.random((2, 13, 15)).astype(np.float32)
    if expand < 0:
        mask = 1 - mask
    c = 0 if tapered else 1
    footprint = np.array([[c, 1, c], [1, 1, 1], [c, 1, c]], dtype=bool)
    want = []
    for m in mask:
        for _ in range(abs(expand)):
            m = (ndimage.grey_dilation if expand > 0 else ndimage.grey_erosion)(m, footprint=footprint)
        want.append(m)
    (out,) = call(registry, "GrowMask", mask=torch.from_numpy(mask), expand=expand, tapered_corners=tapered)
    np.testing.assert_array_equal(out.numpy(), np.stack(want))


def test_feather_mask_ramps_towards_the_chosen_edges(registry):
    (out,) = call(registry, "FeatherMask", mask=torch.ones(1, 6, 8), left=2, top=0, right=3, bottom=1)
    assert out[0, 0].tolist() == pytest.approx([0.5, 1, 1, 1, 1, 1, 2 / 3, 1 / 3])
    assert out[0, :, 3].tolist() == [1] * 6  # bottom 1: the last row × 1/1
    (few,) = call(registry, "FeatherMask", mask=torch.ones(1, 2, 2), left=5, top=0, right=0, bottom=0)
    assert few[0, 0].tolist() == [0.5, 1.0]  # wider than the mask: clipped to it


# -- conditioning ------------------------------------------------------------------------------------------------

def test_conditioning_average_mixes_tokens_and_pooled(registry):
    to = [[torch.ones(1, 4, 3), {"pooled_output": torch.ones(1, 2), "width": 9}]]
    source = [[torch.full((1, 2, 3), 3.0), {"pooled_output": torch.zeros(1, 2)}],
              [torch.zeros(1, 2, 3), {}]]  # only the first entry counts
    (out,) = call(registry, "ConditioningAverage", conditioning_to=to, conditioning_from=source,
                  conditioning_to_strength=0.25)
    (context, extras), = out
    assert context[0, :, 0].tolist() == [2.5, 2.5, 0.25, 0.25]  # source cut/zero-padded to the entry's 4 tokens
    assert extras["pooled_output"].tolist() == [[0.25, 0.25]] and extras["width"] == 9
    assert to[0][0].sum() == 12  # inputs untouched
    (bare,) = call(registry, "ConditioningAverage", conditioning_to=[[torch.ones(1, 1, 3), {}]],
                   conditioning_from=source, conditioning_to_strength=0.5)
    assert torch.equal(bare[0][1]["pooled_output"], torch.zeros(1, 2))


# -- saved workflows and the CLI ---------------------------------------------------------------------------------

def test_comfyui_widget_values_land_on_the_right_inputs(registry):
    """widgets_values as real ComfyUI files save them (the template package, and LoadImageMask's upload button
    value after its other widgets)."""
    def one(kind, widgets):
        ui = {"nodes": [{"id": 1, "type": kind, "mode": 0, "inputs": [], "outputs": [], "widgets_values": widgets}],
              "links": [], "version": 0.4}
        return ui_to_api(ui, registry)["1"]["inputs"]

    assert one("LoadImageMask", ["m.png", "red", "image"]) == {"image": "m.png", "channel": "red"}
    assert one("ImagePadForOutpaint", [200, 200, 0, 200, 0]) == {"left": 200, "top": 200, "right": 0, "bottom": 200,
                                                                 "feathering": 0}
    assert one("ImageScaleToTotalPixels", ["lanczos", 1]) == {"upscale_method": "lanczos", "megapixels": 1,
                                                              "resolution_steps": 1}  # saved before the 3rd widget
    assert one("ImageScaleToTotalPixels", ["area", 1, 16])["resolution_steps"] == 16
    assert one("GrowMask", [20, True]) == {"expand": 20, "tapered_corners": True}
    assert one("FeatherMask", [40, 40, 40, 0]) == {"left": 40, "top": 40, "right": 40, "bottom": 0}
    assert one("ImageBlend", [0.5, "normal"]) == {"blend_factor": 0.5, "blend_mode": "normal"}
    assert one("UpscaleModelLoader", ["RealESRGAN_x4plus.safetensors"]) == {"model_name":
                                                                           "RealESRGAN_x4plus.safetensors"}


def test_load_image_accepts_comfyui_annotated_names(registry, env):
    os.makedirs(os.path.join(env.output_dir, "clipspace"))
    Image.new("RGB", (5, 3), (255, 0, 0)).save(os.path.join(env.output_dir, "clipspace", "mask-1.png"))
    Image.new("RGB", (2, 2)).save(os.path.join(env.temp_dir, "t.png"))
    os.makedirs(os.path.join(env.input_dir, "clipspace"))
    Image.new("RGBA", (2, 2)).save(os.path.join(env.input_dir, "clipspace", "clipspace-mask-123.png"))

    def prompt(name):
        return {"1": {"class_type": "LoadImage", "inputs": {"image": name}},
                "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}

    for name in ("clipspace/mask-1.png [output]", "t.png [temp]", "clipspace/clipspace-mask-123.png [input]"):
        assert validate(prompt(name), registry, env).ok, name
    image, _ = call(registry, "LoadImage", env, image="clipspace/mask-1.png [output]")
    assert image.shape == (1, 3, 5, 3) and torch.all(image[..., 0] == 1)
    for name in ("clipspace/none.png [output]", "../t.png [temp]", "t.png [elsewhere]"):
        (err,) = validate(prompt(name), registry, env).node_errors["1"]["errors"]
        assert err["type"] == "value_not_in_list", name


@pytest.fixture(scope="module")
def run_env(tmp_path_factory):
    return environment(demo_models_dir(tmp_path_factory), tmp_path_factory.mktemp("core"))


def test_every_new_node_runs_in_one_graph_through_latentgraph_run(run_env, tmp_path):
    """The nodes above wired into one API-format graph (with the demo checkpoint and upscaler) and run by the CLI."""
    mask = np.zeros((64, 64, 4), dtype=np.uint8)
    mask[..., 3] = 255
    mask[16:48, 16:48, 3] = 0
    Image.fromarray(mask, "RGBA").save(os.path.join(run_env.input_dir, "hole.png"))
    Image.new("RGB", (40, 30), (0, 0, 255)).save(os.path.join(run_env.output_dir, "earlier.png"))

    def n(kind, **inputs):
        return {"class_type": kind, "inputs": inputs}

    prompt = {
        "1": n("CheckpointLoaderSimple", ckpt_name="demo_sdxl_base.safetensors"),
        "2": n("CLIPTextEncode", text="a red barn", clip=["1", 1]),
        "3": n("CLIPTextEncode", text="a blue lake", clip=["1", 1]),
        "4": n("ConditioningAverage", conditioning_to=["2", 0], conditioning_from=["3", 0],
               conditioning_to_strength=0.5),
        "5": n("EmptyLatentImage", width=64, height=64, batch_size=2),
        "6": n("EmptyLatentImage", width=32, height=32, batch_size=1),
        "7": n("LatentComposite", samples_to=["5", 0], samples_from=["6", 0], x=16, y=16, feather=8),
        "8": n("LoadImageMask", image="hole.png", channel="alpha"),
        "9": n("LatentCompositeMasked", destination=["7", 0], source=["6", 0], x=0, y=0, resize_source=True,
               mask=["8", 0]),
        "10": n("LatentBlend", samples1=["9", 0], samples2=["6", 0], blend_factor=0.8),
        "11": n("ThresholdMask", mask=["8", 0], value=0.5),
        "12": n("GrowMask", mask=["11", 0], expand=2, tapered_corners=True),
        "13": n("SetLatentNoiseMask", samples=["10", 0], mask=["12", 0]),
        "14": n("RepeatLatentBatch", samples=["13", 0], amount=2),
        "15": n("LatentFromBatch", samples=["14", 0], batch_index=1, length=2),
        "16": n("KSampler", model=["1", 0], seed=1, steps=1, cfg=2.0, sampler_name="euler", scheduler="normal",
                positive=["4", 0], negative=["3", 0], latent_image=["15", 0], denoise=1.0),
        "17": n("VAEDecode", samples=["16", 0], vae=["1", 2]),
        "18": n("UpscaleModelLoader", model_name="demo_esrgan_4x.safetensors"),
        "19": n("ImageUpscaleWithModel", upscale_model=["18", 0], image=["17", 0]),
        "20": n("ImageScaleToTotalPixels", image=["19", 0], upscale_method="nearest-exact", megapixels=0.01,
                resolution_steps=8),
        "21": n("ImagePadForOutpaint", image=["20", 0], left=8, top=0, right=8, bottom=0, feathering=4),
        "22": n("MaskToImage", mask=["21", 1]),
        "23": n("ImageBlend", image1=["21", 0], image2=["22", 0], blend_factor=0.5, blend_mode="screen"),
        "24": n("FeatherMask", mask=["12", 0], left=4, top=4, right=4, bottom=4),
        "25": n("InvertMask", mask=["24", 0]),
        "26": n("MaskToImage", mask=["25", 0]),
        "27": n("ImageToMask", image=["23", 0], channel="red"),
        "28": n("MaskToImage", mask=["27", 0]),
        "29": n("LoadImage", image="earlier.png [output]"),
        "30": n("ImageBatch", image1=["23", 0], image2=["28", 0]),
        "31": n("ImageBatch", image1=["26", 0], image2=["29", 0]),
        "32": n("ImageBatch", image1=["30", 0], image2=["31", 0]),
        "33": n("SaveImage", images=["32", 0], filename_prefix="core/all"),
        "34": n("MaskPreview", mask=["24", 0]),
    }
    assert set(NEW_NODES) <= {node["class_type"] for node in prompt.values()}
    path = tmp_path / "all.json"
    path.write_text(json.dumps(prompt))
    rc, out, err = cli("run", str(path), "--models", run_env.models_dir, "--input", run_env.input_dir,
                       "--out", run_env.output_dir, "-q")
    assert rc == 0, err
    sizes = {}
    for file in (line for line in out.splitlines() if line.endswith(".png")):
        with Image.open(file) as im:
            sizes[file] = im.size
    saved = [size for file, size in sizes.items() if file.startswith(run_env.output_dir)]
    # 2 latents sampled → 2 + 2 pictures, then the mask picture and the loaded one; 64² ×4 → 0.01 MP in steps of 8
    # (104²) → 8 px more either side
    assert saved == [(120, 104)] * 6
    assert sorted(sizes.values()) == [(64, 64)] + saved  # and the mask preview


def test_comfyui_mask_template_runs_through_latentgraph_run(env, tmp_path):
    """basic_mask_operations_and_compositing, a real ComfyUI template (masks from channels, thresholds, feathering,
    inversion, compositing, previews), runs unchanged with a picture of our own as its example.png."""
    workflow = load_template("basic_mask_operations_and_compositing")
    previews = [n for n in workflow["nodes"] if n["type"] in ("PreviewImage", "MaskPreview") and n.get("mode", 0) == 0]
    Image.new("RGBA", (96, 64), (200, 100, 50, 128)).save(os.path.join(env.input_dir, "example.png"))
    path = tmp_path / "template.json"
    path.write_text(json.dumps(workflow))
    rc, out, err = cli("run", str(path), "--models", str(tmp_path / "models"), "--input", env.input_dir,
                       "--out", env.output_dir, "-q")
    assert rc == 0, err
    written = [line for line in out.splitlines() if line.endswith(".png")]
    assert len(written) == len(previews) >= 10
