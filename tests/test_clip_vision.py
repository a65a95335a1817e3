"""CLIP vision (issue 18 item 3): a tiny random-weight vision tower saved in each real layout, loaded by
CLIPVisionLoader and run by CLIPVisionEncode, gives what transformers' CLIPVisionModelWithProjection / open_clip's
own tower give called directly; the full-size towers (open_clip's configs, on the meta device) are read as the right
ones; pictures are prepared as CLIPImageProcessor prepares them; unCLIPConditioning's image embeddings replace the
pooled vector of SDXL's vector input (revision), noise-augmented as ComfyUI does; and ComfyUI's shared revision
workflow runs through `latentgraph run`."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from sdxl_helpers import cli, demo_models_dir
from template_helpers import expected_checkpoints, load_template, place_demo_checkpoints

from nodes.clip_vision import (DEMO_CLIP_VISION, ClipVisionOutput, preprocess, vision_config, vision_state,
                               write_demo_clip_vision)
from nodes.node import Context, Environment
from nodes.unclip import image_vector, noise_augment

transformers = pytest.importorskip("transformers")


def tiny_transformers_tower(seed=0, width=64, heads=4, layers=2, patch=32, image=224, projection=32):
    """transformers' own model with its own random init (not ours), a few norms and biases perturbed."""
    torch.manual_seed(seed)
    config = transformers.CLIPVisionConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                                           num_attention_heads=heads, image_size=image, patch_size=patch,
                                           projection_dim=projection, hidden_act="gelu")
    model = transformers.CLIPVisionModelWithProjection(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def load(registry, models, name):
    ctx = Context(env=Environment(models_dir=str(models)))
    (model,) = registry["CLIPVisionLoader"].call(ctx, {"clip_name": name}).outputs
    return ctx, model


def encode(registry, ctx, model, images, crop="center"):
    (out,) = registry["CLIPVisionEncode"].call(ctx, {"clip_vision": model, "image": images, "crop": crop}).outputs
    return out


def smooth_pictures(n, h, w, seed=0):
    """Pictures with structure at several scales (noise upsampled), like photos rather than white noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, max(h // 8, 2), max(w // 8, 2), generator=g)
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear").movedim(1, -1)


def close(a, b, tol=1e-4):
    """Relative to the reference's scale, ≤ tol."""
    err = ((a - b).abs().max() / b.abs().max()).item()
    assert err <= tol, err
    return err


# -- the encoder against its references ---------------------------------------------------------------------------

@pytest.mark.parametrize("prefix, suffix", [("", ".safetensors"), ("clip_vision.", ".safetensors"),
                                            ("", ".pth")])
def test_transformers_layout_matches_transformers(registry, tmp_path, prefix, suffix):
    """The clip_vision_g layout (vision_model.* + visual_projection.weight), with and without a prefix, as
    safetensors and as a pickle; a whole CLIPModel-style file's text half is left out. Outputs: image embeds, last and
    penultimate hidden states."""
    reference = tiny_transformers_tower()
    state = {prefix + k: v for k, v in reference.state_dict().items()}
    state[prefix + "text_model.embeddings.token_embedding.weight"] = torch.zeros(10, 8)
    (tmp_path / "clip_vision").mkdir()
    if suffix == ".pth":
        torch.save(state, tmp_path / "clip_vision" / "tower.pth")
    else:
        save_file(state, str(tmp_path / "clip_vision" / "tower.safetensors"))
    ctx, model = load(registry, tmp_path, "tower" + suffix)
    assert model.image_size == 224 and model.projection_dim == 32
    assert model.model.config.num_attention_heads == 4
    images = smooth_pictures(2, 224, 224)
    out = encode(registry, ctx, model, images)
    pixels = transformers.CLIPImageProcessor()(images=[(im * 255).round().to(torch.uint8).numpy() for im in images],
                                               return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        want = reference(pixel_values=pixels, output_hidden_states=True)
    assert isinstance(out, ClipVisionOutput) and out.image_embeds.shape == (2, 32)
    close(out.image_embeds, want.image_embeds)
    close(out.last_hidden_state, want.last_hidden_state)
    close(out.penultimate_hidden_states, want.hidden_states[-2])
    assert out.image_embeds[0].sub(out.image_embeds[1]).abs().max() > 1e-3  # the two pictures differ


def test_open_clip_layout_matches_open_clip(registry, tmp_path):
    """A whole open_clip CLIP file (visual.* and the text tower): the visual tower is converted (fused q/k/v split,
    proj transposed) and gives open_clip's encode_image."""
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(1)
    clip = open_clip.model.CLIP(embed_dim=32, vision_cfg=dict(image_size=224, layers=2, width=64, patch_size=32,
                                                              head_width=16),
                                text_cfg=dict(context_length=77, vocab_size=100, width=32, heads=4, layers=1)).eval()
    with torch.no_grad():
        for p in clip.visual.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    (tmp_path / "clip_vision").mkdir()
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()},
              str(tmp_path / "clip_vision" / "open_clip_model.safetensors"))
    ctx, model = load(registry, tmp_path, "open_clip_model.safetensors")
    images = smooth_pictures(2, 224, 224, seed=1)
    out = encode(registry, ctx, model, images)
    with torch.no_grad():
        want = clip.encode_image(preprocess(images, 224))
    close(out.image_embeds, want)


@pytest.mark.parametrize("name, tower, image", [("ViT-bigG-14", "ViT-bigG/14", 224), ("ViT-H-14", "ViT-H/14", 224),
                                                ("ViT-L-14", "ViT-L/14", 224), ("ViT-L-14-336", "ViT-L/14", 336)])
def test_full_size_towers_are_read_as_themselves(name, tower, image):
    """open_clip's own configs of the towers people download, built on the meta device and converted to the
    transformers layout (what clip_vision_g.safetensors holds): depth, width, heads (open_clip's head_width), input
    size and projection are read right, and the transformers model built from them takes every tensor."""
    open_clip = pytest.importorskip("open_clip")
    from nodes.sdxl.meta import adopt, empty_modules

    cfg = open_clip.get_model_config(name)
    with torch.device("meta"):
        visual = open_clip.model.CLIP(**cfg).visual
    state = vision_state({"visual." + k: v for k, v in visual.state_dict().items()}, name)
    config, found = vision_config(state, name)
    vision = cfg["vision_cfg"]
    assert found == tower
    assert (config.hidden_size, config.num_hidden_layers, config.image_size, config.patch_size) == (
        vision["width"], vision["layers"], image, 14)
    assert config.num_attention_heads == vision["width"] // vision.get("head_width", 64)
    assert config.projection_dim == cfg["embed_dim"]
    assert config.hidden_act == ("quick_gelu" if name.startswith("ViT-L") else "gelu")
    with empty_modules():
        model = transformers.CLIPVisionModelWithProjection(config)
    adopt(model, state)  # raises unless every name and shape fits


def test_bad_files_are_refused_naming_node_and_input(registry, tmp_path):
    (tmp_path / "clip_vision").mkdir()
    (tmp_path / "clip_vision" / "garbage.safetensors").write_bytes(b"not weights")
    save_file({"model.0.weight": torch.zeros(2, 2)}, str(tmp_path / "clip_vision" / "esrgan.safetensors"))
    state = tiny_transformers_tower().state_dict()
    del state["visual_projection.weight"]
    save_file(state, str(tmp_path / "clip_vision" / "no_projection.safetensors"))
    for name, message in (("garbage.safetensors", "'garbage.safetensors': cannot read it as model weights"),
                          ("esrgan.safetensors", "not a CLIP vision model"),
                          ("no_projection.safetensors", "has no 'visual_projection.weight'"),
                          ("absent.safetensors", "not found")):
        with pytest.raises((ValueError, FileNotFoundError), match=f"CLIPVisionLoader: clip_name: .*{message}"):
            load(registry, tmp_path, name)


# -- preprocessing ------------------------------------------------------------------------------------------------

ONE_LEVEL = 1.01 / 255 / 0.26130258  # one 8-bit step in the normalised units of the narrowest channel

@pytest.mark.parametrize("h, w", [(224, 224), (300, 260), (512, 768), (240, 1000)])
def test_center_crop_preprocessing_matches_clip_image_processor(h, w):
    """Against transformers' CLIPImageProcessor (PIL bicubic resize of the shorter side to 224, centre crop,
    rescale, CLIP mean/std). A picture already 224² is not resized: identical. Resized ones differ by the bicubic
    kernels (torch's a = −0.75 with antialiasing against PIL's a = −0.5): measured, at most one 8-bit level (0.015 in
    normalised units) and 0.003–0.004 on average. (Where the longer side scales to just under a half pixel, e.g.
    180×400 → 497.8, ComfyUI rounds and CLIPImageProcessor truncates, and the crops are one pixel apart.)"""
    images = smooth_pictures(1, h, w, seed=h + w)
    ours = preprocess(images, 224)
    u8 = (images[0] * 255).round().to(torch.uint8).numpy()
    want = transformers.CLIPImageProcessor()(images=u8, return_tensors="pt")["pixel_values"]
    assert ours.shape == want.shape == (1, 3, 224, 224)
    err = (ours - want).abs()
    if (h, w) == (224, 224):
        assert err.max() < 1e-6
    else:
        assert err.max() < ONE_LEVEL and err.mean() < 0.005, (err.max().item(), err.mean().item())


def test_crop_none_squashes_the_whole_picture():
    """crop "none" resizes to 224 × 224 without cropping: CLIPImageProcessor with a fixed size and no centre crop."""
    images = smooth_pictures(1, 300, 200, seed=3)
    u8 = (images[0] * 255).round().to(torch.uint8).numpy()
    want = transformers.CLIPImageProcessor(size={"height": 224, "width": 224}, do_center_crop=False)(
        images=u8, return_tensors="pt")["pixel_values"]
    err = (preprocess(images, 224, crop=False) - want).abs()
    assert err.max() < ONE_LEVEL and err.mean() < 0.005, (err.max().item(), err.mean().item())
    cropped = preprocess(images, 224, crop=True)
    assert (cropped - want).abs().mean() > 5 * err.mean()  # the centre crop really is another picture


# -- unCLIP conditioning and SDXL revision --------------------------------------------------------------------------

def cosine_alphas_cumprod():
    """ᾱ_t of the 1000-step squaredcos_cap_v2 schedule, the way diffusers' DDPMScheduler builds it."""
    diffusers = pytest.importorskip("diffusers")
    return diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").alphas_cumprod


def fake_output(embeds):
    return ClipVisionOutput(image_embeds=embeds, last_hidden_state=torch.zeros(1), penultimate_hidden_states=None)


def test_noise_augmentation_is_the_cosine_forward_process():
    """Level a ∈ [0, 1] is timestep round(999·a) of the cosine schedule: √ᾱ·e + √(1 − ᾱ)·ε, ε drawn from a CPU
    generator seeded with seed − 10 (diffusers' scheduler as the schedule's reference)."""
    alphas = cosine_alphas_cumprod()
    embed = torch.randn(1280)
    for level, seed in ((0.0, 0), (0.3, 42), (1.0, 7)):
        t = round(999 * level)
        eps = torch.randn(1, 1280, generator=torch.Generator().manual_seed((seed - 10) % 2 ** 64))
        want = alphas[t].sqrt() * embed + (1 - alphas[t]).sqrt() * eps
        torch.testing.assert_close(noise_augment(embed, level, seed), want, atol=1e-5, rtol=1e-5)
    assert math.isclose((1 - alphas[0]).sqrt().item(), 0.0064, rel_tol=0.02)  # level 0 still adds a trace


def test_unclip_conditioning_node_appends_and_the_vector_sums(registry):
    cond = [[torch.zeros(1, 77, 64), {"pooled_output": torch.ones(1, 32)}]]
    a, b = fake_output(torch.randn(1, 32)), fake_output(torch.randn(2, 32))  # b: a batch of two pictures

    def unclip(conditioning, output, strength, noise):
        (out,) = registry["unCLIPConditioning"].call(Context(), {
            "conditioning": conditioning, "clip_vision_output": output, "strength": strength,
            "noise_augmentation": noise}).outputs
        return out

    assert unclip(cond, a, 0.0, 0.5) is cond  # strength 0: unchanged, as in ComfyUI
    one = unclip(cond, a, 0.8, 0.0)
    two = unclip(one, b, -0.5, 0.2)
    assert "unclip_conditioning" not in cond[0][1] and len(one[0][1]["unclip_conditioning"]) == 1
    assert [i["strength"] for i in two[0][1]["unclip_conditioning"]] == [0.8, -0.5]
    torch.testing.assert_close(image_vector(one[0][1]["unclip_conditioning"], 5, 32), noise_augment(a.image_embeds,
                                                                                                    0.0, 5) * 0.8)
    parts = [noise_augment(a.image_embeds, 0.0, 5) * 0.8] + [noise_augment(e, 0.2, 5) * -0.5 for e in b.image_embeds]
    torch.testing.assert_close(image_vector(two[0][1]["unclip_conditioning"], 5, 32),
                               noise_augment(sum(parts), 0.0, 5))
    with pytest.raises(ValueError, match="image embeddings are 32 wide but this model's pooled input is 1280 wide"):
        image_vector(one[0][1]["unclip_conditioning"], 5, 1280)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return demo_models_dir(tmp_path_factory)


@pytest.mark.parametrize("ckpt", ["demo_sdxl_base.safetensors", "demo_sdxl_refiner.safetensors"])
def test_revision_replaces_the_pooled_vector_in_sdxl_y(models, ckpt):
    """On the demo SDXL base and refiner, through the MODEL's prepare (what every sampler calls): y's pooled part is
    the augmented, weighted image embedding in place of the text's, the size features are untouched, and the seed
    changes only the trace of noise."""
    from nodes.library.loaders import load_model

    model, clip, _ = load_model(Context(env=Environment(models_dir=models)), ckpt)
    cond = clip.conditioning("a red barn")
    embeds = torch.randn(1, 32)
    revised = [[cond[0][0], {**cond[0][1], "unclip_conditioning": [
        {"clip_vision_output": fake_output(embeds), "strength": 0.7, "noise_augmentation": 0.0}]}]]
    (plain,) = model.prepare(cond, "positive", (8, 8), seed=3)
    (image,) = model.prepare(revised, "positive", (8, 8), seed=3)
    (other_seed,) = model.prepare(revised, "positive", (8, 8), seed=4)
    torch.testing.assert_close(plain["y"][:, :32], cond[0][1]["pooled_output"])
    torch.testing.assert_close(image["y"][:, :32], noise_augment(embeds, 0.0, 3) * 0.7)
    assert torch.equal(image["y"][:, 32:], plain["y"][:, 32:]) and torch.equal(image["context"], plain["context"])
    assert 0 < (image["y"] - other_seed["y"]).abs().max() < 0.05  # √(1 − ᾱ₀)·0.7 ≈ 0.0045 per unit of noise


def test_demo_tower_conditions_the_demo_base_and_changes_the_picture(registry, models, tmp_path):
    """The demo CLIP vision file is in the clip_vision_g layout (the same file every time) and projects to the demo
    base's pooled width; the image embeds it gives change the sampled latent (KSampler through the node calls)."""
    from safetensors.torch import load_file

    state = load_file(f"{models}/clip_vision/{DEMO_CLIP_VISION}")
    again = load_file(write_demo_clip_vision(tmp_path))
    assert state.keys() == again.keys() and all(torch.equal(again[k], v) for k, v in state.items())
    assert {"vision_model.embeddings.class_embedding", "vision_model.pre_layrnorm.weight",
            "vision_model.encoder.layers.1.self_attn.q_proj.weight", "vision_model.post_layernorm.bias",
            "visual_projection.weight"} <= set(state)
    assert state["visual_projection.weight"].shape == (32, 64)
    ctx = Context(env=Environment(models_dir=models))
    model, clip, _ = registry["CheckpointLoaderSimple"].call(ctx, {"ckpt_name": "demo_sdxl_base.safetensors"}).outputs
    _, tower = load(registry, models, DEMO_CLIP_VISION)
    cond = clip.conditioning("a red barn")
    (latent,) = registry["EmptyLatentImage"].call(ctx, {"width": 64, "height": 64, "batch_size": 1}).outputs

    def sample(positive):
        (out,) = registry["KSampler"].call(ctx, dict(model=model, seed=1, steps=2, cfg=3.0, sampler_name="euler",
                                                     scheduler="normal", positive=positive, negative=cond,
                                                     latent_image=latent, denoise=1.0)).outputs
        return out["samples"]

    def revised(picture):
        seen = encode(registry, ctx, tower, picture)
        (out,) = registry["unCLIPConditioning"].call(ctx, {"conditioning": cond, "clip_vision_output": seen,
                                                           "strength": 1.0, "noise_augmentation": 0.0}).outputs
        return sample(out)

    plain, first, second = sample(cond), revised(smooth_pictures(1, 96, 96, 1)), revised(smooth_pictures(1, 96, 96, 2))
    assert (first - plain).abs().mean() > 1e-3 and (first - second).abs().mean() > 1e-3


def test_sdxl_revision_template_runs_headless(tmp_path):
    """ComfyUI's shared revision workflow (two pictures, each through CLIPVisionEncode and unCLIPConditioning at
    strength 0.75, dpmpp_3m_sde_gpu) with the demo models under the names it asks for, shrunk to 64² and 3 steps."""
    workflow = load_template("sdxl_revision_text_prompts")
    for node in workflow["nodes"]:
        if node["type"] == "EmptyLatentImage":
            node["widgets_values"][:2] = [64, 64]
        elif node["type"] == "KSampler":
            node["widgets_values"][2] = 3
    assert {n["type"] for n in workflow["nodes"]} >= {"CLIPVisionLoader", "CLIPVisionEncode", "unCLIPConditioning"}
    models = tmp_path / "models"
    place_demo_checkpoints(models, expected_checkpoints(workflow))
    write_demo_clip_vision(models / "clip_vision").rename(models / "clip_vision" / "clip_vision_g.safetensors")
    (tmp_path / "input").mkdir()
    for node in workflow["nodes"]:
        if node["type"] == "LoadImage":
            pixels = (smooth_pictures(1, 120, 90, seed=node["id"])[0].numpy() * 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "input" / node["widgets_values"][0])
    path = tmp_path / "revision.json"
    path.write_text(json.dumps(workflow))
    rc, out, err = cli("run", str(path), "--models", str(models), "--input", str(tmp_path / "input"),
                       "--out", str(tmp_path / "out"), "-q")
    assert rc == 0, err
    (png,) = [line for line in out.splitlines() if line.endswith(".png")]
    with Image.open(png) as im:
        assert im.size == (64, 64)
        prompt = json.loads(im.text["prompt"])
    assert sum(e["class_type"] == "unCLIPConditioning" for e in prompt.values()) == 2


def test_a_missing_clip_vision_file_is_reported_in_its_folder(registry, tmp_path):
    """The template names clip_vision_g.safetensors; without it the report says models/clip_vision, not the text
    encoders' folder that ComfyUI's other clip_name inputs read."""
    from server.graph import ui_to_api, validate

    env = Environment(models_dir=str(tmp_path / "models"), input_dir=str(tmp_path))
    prompt = ui_to_api(load_template("sdxl_revision_text_prompts"), registry)
    report = validate(prompt, registry, env)
    errors = [e for entry in report.node_errors.values() for e in entry["errors"]
              if e["extra_info"].get("file") == "clip_vision_g.safetensors"]
    assert len(errors) == 1 and errors[0]["type"] == "missing_model"
    assert errors[0]["extra_info"]["folder"] == "clip_vision"
    assert str(tmp_path / "models" / "clip_vision") in errors[0]["message"]


def test_loaded_tower_is_shared_through_the_residency_service(registry, models):
    """As the server runs nodes: the residency service builds a tower once per file and dtype, and CLIPVisionEncode
    gets it made resident before running it."""
    from server.models import ModelResidency

    residency = ModelResidency("cpu")
    ctx = Context(env=Environment(models_dir=models), resources=residency)
    first = registry["CLIPVisionLoader"].call(ctx, {"clip_name": DEMO_CLIP_VISION}).outputs[0]
    again = registry["CLIPVisionLoader"].call(ctx, {"clip_name": DEMO_CLIP_VISION}).outputs[0]
    assert again is first and residency.stats()["builds"] == 1
    out = encode(registry, ctx, first, smooth_pictures(1, 64, 80))
    _, direct = load(registry, models, DEMO_CLIP_VISION)
    assert torch.equal(out.image_embeds, encode(registry, Context(), direct, smooth_pictures(1, 64, 80)).image_embeds)


def test_clip_vision_output_counts_against_the_output_cache():
    """Its hidden states are most of its bytes (bigG: 2 × 257 × 1664 floats a picture); the cache's bound sees them."""
    from server.cache import size_of

    out = ClipVisionOutput(image_embeds=torch.zeros(2, 32), last_hidden_state=torch.zeros(2, 50, 64),
                           penultimate_hidden_states=torch.zeros(2, 50, 64))
    assert size_of((out,)) == 4 * (2 * 32 + 2 * 2 * 50 * 64)
