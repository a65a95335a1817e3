"""The shipped workflows run headless through `latentgraph run` on the demo checkpoints, and what they write is
checked: sizes, embedded workflows, determinism per seed, identical pixels from the fine-grained and the
ComfyUI-named graph, refiner effect, inpainting confined to the mask, one image per aspect bucket, the
upscale-model hires fix's sizes, outpainting around a kept source, the ControlNet steering the picture, revision's
picture reaching the result, the other families' text-to-image and image-to-image, a LoRA's effect (none at strength
0) and LCM-LoRA sampling; and the executor re-runs only what a change touches."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from patience import patience
from PIL import Image

from nodes.node import load_builtin_nodes
from server.executor import Executor
from server.graph import load_prompt, validate
from sdxl_helpers import demo_models_dir, environment, run_workflow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOWS = ["sdxl_base", "sdxl_base_comfy", "sdxl_base_refiner", "sdxl_refiner_sdedit", "sdxl_img2img",
             "sdxl_inpaint", "sdxl_aspect_buckets", "sdxl_hires_upscale_model", "sdxl_outpaint", "sdxl_controlnet_canny",
             "sdxl_revision", "sd15_txt2img", "sd15_img2img", "sd2_768v_txt2img", "sdxl_turbo_1step", "sdxl_lora",
             "sdxl_lcm_lora", "sd3_txt2img", "sd3_img2img",
             "sd3_unet_only"]


def workflow_path(name: str) -> str:
    return os.path.join(REPO, "workflows", f"{name}.json")


def pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def by_prefix(images: dict[str, str], prefix: str) -> str:
    found = [p for name, p in images.items() if name.startswith(prefix + "_0")]
    assert len(found) == 1, (prefix, sorted(images))
    return found[0]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return demo_models_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def env(models, tmp_path_factory):
    return environment(models, tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def ran(env):
    """Every shipped workflow, run once as shipped."""
    return {name: run_workflow(workflow_path(name), env) for name in WORKFLOWS}


@pytest.mark.parametrize("name", WORKFLOWS)
def test_shipped_workflow_writes_pngs_that_carry_it(ran, name):
    with open(workflow_path(name)) as f:
        shipped = json.load(f)
    assert any(n["type"] == "Note" and n["widgets_values"][0] for n in shipped["nodes"]), "each workflow has a note"
    for path in ran[name].values():
        with Image.open(path) as im:
            assert json.loads(im.info["workflow"])["nodes"] == shipped["nodes"]
            assert json.loads(im.info["prompt"])
            assert im.size[0] % 8 == 0 and im.size[1] % 8 == 0


def test_fine_grained_and_comfy_graphs_give_identical_pixels(ran):
    a = pixels(by_prefix(ran["sdxl_base"], "sdxl_base"))
    b = pixels(by_prefix(ran["sdxl_base_comfy"], "sdxl_base_comfy"))
    assert a.shape == (256, 256, 3)
    assert np.array_equal(a, b)
    assert a.std() > 5  # an image, not a flat field


def test_same_seed_same_image_other_seed_other_image(ran, env):
    first = pixels(by_prefix(ran["sdxl_base_comfy"], "sdxl_base_comfy"))
    again = run_workflow(workflow_path("sdxl_base_comfy"), env, "5.seed=42")
    other = run_workflow(workflow_path("sdxl_base_comfy"), env, "5.seed=43")
    assert np.array_equal(first, pixels(next(iter(again.values()))))
    assert not np.array_equal(first, pixels(next(iter(other.values()))))


def test_ensemble_of_experts_refiner_changes_the_base_result(ran, env):
    ensemble = pixels(by_prefix(ran["sdxl_base_refiner"], "sdxl_base_refiner"))
    # Same graph with the base running to the end and the refiner stage empty (start ≥ steps returns its input).
    base_only = run_workflow(workflow_path("sdxl_base_refiner"), env, "8.end_at_step=10000",
                             "8.return_with_leftover_noise=disable", "9.start_at_step=6")
    base_only = pixels(next(iter(base_only.values())))
    assert ensemble.shape == base_only.shape == (256, 256, 3)
    assert np.abs(ensemble - base_only).mean() > 1


def test_lora_changes_the_picture_and_at_strength_zero_gives_the_plain_one(ran, env):
    """sdxl_lora is sdxl_base_comfy with a Load LoRA node (same prompt, seed, size, sampler)."""
    with_lora = pixels(by_prefix(ran["sdxl_lora"], "sdxl_lora"))
    plain = pixels(by_prefix(ran["sdxl_base_comfy"], "sdxl_base_comfy"))
    off = pixels(next(iter(run_workflow(workflow_path("sdxl_lora"), env, "2.strength_model=0",
                                        "2.strength_clip=0").values())))
    assert np.array_equal(off, plain)
    assert np.abs(with_lora - plain).mean() > 1
    clip_only = pixels(next(iter(run_workflow(workflow_path("sdxl_lora"), env, "2.strength_model=0").values())))
    assert np.abs(clip_only - plain).mean() > 1 and np.abs(clip_only - with_lora).mean() > 1


def test_lcm_lora_four_steps_of_the_lcm_sampler(ran, env):
    image = pixels(by_prefix(ran["sdxl_lcm_lora"], "sdxl_lcm_lora"))
    with open(workflow_path("sdxl_lcm_lora")) as f:
        sampler = next(n for n in json.load(f)["nodes"] if n["type"] == "KSampler")
    assert sampler["widgets_values"][2:6] == [4, 1.0, "lcm", "sgm_uniform"]
    without = pixels(next(iter(run_workflow(workflow_path("sdxl_lcm_lora"), env, "2.strength_model=0").values())))
    assert image.shape == without.shape == (256, 256, 3) and image.std() > 1
    assert np.abs(image - without).mean() > 1


def test_sdedit_refines_the_base_image(ran):
    base = pixels(by_prefix(ran["sdxl_refiner_sdedit"], "sdxl_sdedit_base"))
    refined = pixels(by_prefix(ran["sdxl_refiner_sdedit"], "sdxl_sdedit_refined"))
    assert base.shape == refined.shape == (256, 256, 3)
    assert not np.array_equal(base, refined)
    # the base half of this graph is the same model, prompt, seed and steps as sdxl_base.json
    assert np.array_equal(base, pixels(by_prefix(ran["sdxl_base"], "sdxl_base")))


@pytest.mark.parametrize("name", ["sdxl_img2img", "sd15_img2img", "sd3_img2img"])
def test_img2img_starts_from_the_source(ran, name):
    source = pixels(by_prefix(ran[name], f"{name}_source"))
    out = pixels(by_prefix(ran[name], name))
    assert source.shape == out.shape == (256, 256, 3)
    assert not np.array_equal(source, out)


@pytest.mark.parametrize("name", ["sd15_txt2img", "sd2_768v_txt2img", "sdxl_turbo_1step", "sd3_txt2img"])
def test_other_families_text_to_image(ran, env, name):
    first = pixels(by_prefix(ran[name], name))
    assert first.shape == (256, 256, 3) and first.std() > 5
    assert np.array_equal(first, pixels(next(iter(run_workflow(workflow_path(name), env).values()))))


def test_sd3_from_separate_files_draws_what_the_checkpoint_draws(ran):
    """sd3_unet_only (UNETLoader + TripleCLIPLoader + VAELoader) reads the demo checkpoint's MMDiT, text encoders and
    VAE as separate files; with sd3_txt2img's prompt, seed, size and sampler it gives the same pixels."""
    separate = pixels(by_prefix(ran["sd3_unet_only"], "sd3_unet_only"))
    assert separate.shape == (256, 256, 3) and separate.std() > 5
    assert np.array_equal(separate, pixels(by_prefix(ran["sd3_txt2img"], "sd3_txt2img")))


def test_inpaint_changes_pixels_only_inside_the_mask(ran):
    source = pixels(by_prefix(ran["sdxl_inpaint"], "sdxl_inpaint_source"))
    out = pixels(by_prefix(ran["sdxl_inpaint"], "sdxl_inpaint"))
    inside = np.zeros(source.shape[:2], bool)
    inside[80:176, 80:176] = True  # the workflow's 96² square at (80, 80)
    changed = np.abs(out - source).sum(-1) > 0
    assert not changed[~inside].any()
    assert changed[inside].mean() > 0.5


def test_hires_upscale_model_upscales_then_redraws(ran):
    low = pixels(by_prefix(ran["sdxl_hires_upscale_model"], "sdxl_hires_upscale_model_lowres"))
    final = pixels(by_prefix(ran["sdxl_hires_upscale_model"], "sdxl_hires_upscale_model"))
    assert low.shape == (128, 128, 3) and final.shape == (256, 256, 3)  # ×4 by the model, then × 0.5
    assert final.std() > 5


def test_outpaint_widens_the_picture_and_keeps_the_source_inside(ran):
    source = pixels(by_prefix(ran["sdxl_outpaint"], "sdxl_outpaint_source"))
    out = pixels(by_prefix(ran["sdxl_outpaint"], "sdxl_outpaint"))
    assert source.shape == (256, 256, 3) and out.shape == (256, 384, 3)  # 64 px more on the left and the right
    # more than the 24 px feathering away from the new sides the source is pasted back exactly
    assert np.array_equal(out[:, 64 + 24:64 + 233], source[:, 24:233])
    assert not np.array_equal(out[:, 64:64 + 24], source[:, :24])
    for side in (out[:, :64], out[:, -64:]):  # new content, not the grey padding
        assert np.abs(side - 128).mean() > 10 and side.std() > 5


def test_controlnet_canny_steers_the_picture(ran, env):
    with open(workflow_path("sdxl_controlnet_canny")) as f:
        apply_id = next(n["id"] for n in json.load(f)["nodes"] if n["type"] == "ControlNetApplyAdvanced")
    steered = pixels(by_prefix(ran["sdxl_controlnet_canny"], "sdxl_controlnet_canny"))
    plain = run_workflow(workflow_path("sdxl_controlnet_canny"), env, f"{apply_id}.strength=0")
    assert steered.shape == (256, 256, 3) and steered.std() > 5
    assert np.abs(steered - pixels(by_prefix(plain, "sdxl_controlnet_canny"))).mean() > 2


def test_revision_picture_reaches_the_result(ran, env):
    """The encoded picture reaches the result: strength 0 (unCLIPConditioning passes the prompt through, so the text's
    pooled vector is used) gives another result, and so does another source picture (measured mean differences on
    0..255: 3.1 and 0.66; the random demo tower maps different pictures to nearby embeddings)."""
    with open(workflow_path("sdxl_revision")) as f:
        nodes = json.load(f)["nodes"]
    revised = pixels(by_prefix(ran["sdxl_revision"], "sdxl_revision"))
    assert revised.shape == (256, 256, 3) and revised.std() > 5
    unclip = next(n["id"] for n in nodes if n["type"] == "unCLIPConditioning")
    source_sampler = min(n["id"] for n in nodes if n["type"] == "KSampler")  # the first row makes the picture
    plain = pixels(by_prefix(run_workflow(workflow_path("sdxl_revision"), env, f"{unclip}.strength=0"),
                             "sdxl_revision"))
    other = pixels(by_prefix(run_workflow(workflow_path("sdxl_revision"), env, f"{source_sampler}.seed=8"),
                             "sdxl_revision"))
    assert np.abs(revised - plain).mean() > 1 and np.abs(revised - other).mean() > 0.2


def test_aspect_buckets_one_image_per_bucket_at_its_size(ran):
    from nodes.library.latent import ASPECT_BUCKETS, BUCKET_CHOICES

    with open(workflow_path("sdxl_aspect_buckets")) as f:
        latents = [n for n in json.load(f)["nodes"] if n["type"] == "SDXLEmptyLatent"]
    images = ran["sdxl_aspect_buckets"]
    assert len(images) == len(latents) >= 5
    for node in latents:
        resolution, _, _, scale, _ = node["widgets_values"]
        width, height = ASPECT_BUCKETS[BUCKET_CHOICES.index(resolution)]
        with Image.open(by_prefix(images, f"bucket_{width}x{height}")) as im:
            assert im.size == (round(width * scale), round(height * scale))


def test_changing_the_seed_reruns_only_sampler_decode_save(env):
    registry = load_builtin_nodes()
    with open(workflow_path("sdxl_base_comfy")) as f:
        prompt, _ = load_prompt(json.load(f), registry)
    executor = Executor(registry, env)

    def run(changes=()):
        p = json.loads(json.dumps(prompt))
        for node_id, name, value in changes:
            p[node_id]["inputs"][name] = value
        report = validate(p, registry, env)
        assert report.ok, report.lines()
        result = executor.run(p, report.outputs, values=report.values)
        assert result.status == "success", result.error
        return {p[n]["class_type"] for n in result.executed}, {p[n]["class_type"] for n in result.cached}

    run()
    executed, cached = run([("5", "seed", 7)])
    assert executed == {"KSampler", "VAEDecode", "SaveImage"}
    assert {"CheckpointLoaderSimple", "CLIPTextEncode", "EmptyLatentImage"} <= cached
    executed, cached = run([("2", "text", "a different prompt")])
    assert "CheckpointLoaderSimple" in cached and "CheckpointLoaderSimple" not in executed
    assert executed == {"CLIPTextEncode", "KSampler", "VAEDecode", "SaveImage"}


def test_latentgraph_run_in_a_real_process(env, tmp_path):
    out = tmp_path / "out"
    script = os.path.join(os.path.dirname(sys.executable), "latentgraph")  # the installed console script
    command = [script] if os.path.exists(script) else [sys.executable, "-m", "server.cli"]
    proc = subprocess.run(command + ["run", workflow_path("sdxl_base_comfy"), "--models", env.models_dir,
                                     "--out", str(out), "-q"],
                          cwd=REPO, capture_output=True, text=True, timeout=patience(600))
    assert proc.returncode == 0, proc.stderr
    written = [line for line in proc.stdout.splitlines() if line.endswith(".png")]
    assert len(written) == 1 and os.path.dirname(written[0]) == str(out)
    with Image.open(written[0]) as im:
        assert im.size == (256, 256)
