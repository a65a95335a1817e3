"""ControlNet against diffusers: ``ControlNetModel`` and the UNet's residual injection
(``down_block_additional_residuals`` / ``mid_block_additional_residual``) on tiny random SDXL and SD 1.x models, ours loaded by our loader from files in
the original layout (filled into diffusers by diffusers' own converter) and in the diffusers layout (a folder, and its
weights file alone); the full-size SDXL, SD 1.5 and SD 2.1 layouts against diffusers' on the meta device; chained
ControlNets add up; the nodes through `latentgraph run`, where start/end percent must give exactly what a two-stage
KSamplerAdvanced run with and without the control gives."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from nodes.checkpoints import load_checkpoint
from nodes.controlnet import (DEMO_CONTROLNET, PREFIX, apply, config_from_diffusers_shapes, diffusers_names,
                              load_controlnet)
from nodes.demo import randomize
from nodes.families import family_of
from nodes.families.ldm import unet_config_from_diffusers
from nodes.families.sd1 import SD15_UNET, TINY_SD1_UNET
from nodes.families.sd2 import SD21_UNET
from nodes.sdxl.configs import SDXL_BASE_UNET, TINY_BASE_UNET
from nodes.sdxl.controlnet import ControlNetConfig, ControlNetModel
from nodes.sdxl.meta import empty_modules
from sdxl_helpers import cli, demo_models_dir
from tests.oracles import demo_models, diffusers_unet, load_single_file_into_diffusers, rel_err, rerandomize
from tests.test_sd_families import reference_unet_and_vae
from tests.test_unet import inputs

TOL = 1e-4
CONFIGS = {"sdxl_base": TINY_BASE_UNET, "sd1": TINY_SD1_UNET}


def reference_unet(kind: str):
    """diffusers' UNet filled from the demo checkpoint by diffusers' converter."""
    if kind == "sd1":
        return reference_unet_and_vae("sd1")[0]
    unet = diffusers_unet("base")
    load_single_file_into_diffusers(demo_models()[kind], unet=unet)
    return unet


def write_controlnet(kind: str, layout: str, folder, seed: int):
    """A random ControlNet for ``kind``'s demo UNet in ``layout``: (the path our loader reads, diffusers'
    ``ControlNetModel`` holding the same weights)."""
    from diffusers import ControlNetModel as Reference
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING, convert_controlnet_checkpoint

    ref = Reference.from_unet(reference_unet(kind)).eval()
    folder.mkdir(parents=True, exist_ok=True)
    if layout.startswith("diffusers"):
        rerandomize(ref, seed).save_pretrained(folder / "net")
        if layout == "diffusers":
            return folder / "net", ref
        path = folder / "controlnet_diffusers_layout.safetensors"  # the weights file alone, as people rename it
        shutil.copy(folder / "net" / "diffusion_pytorch_model.safetensors", path)
        return path, ref
    # the original layout, written from our module's names and read by diffusers' own converter (strictly)
    net = randomize(ControlNetModel(ControlNetConfig(CONFIGS[kind])), torch.Generator().manual_seed(seed))
    prefix = PREFIX if layout == "original" else ""
    path = folder / f"control_{kind}_{layout}.safetensors"
    save_file({prefix + k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    state = {PREFIX + k: v for k, v in load_file(str(path)).items()} if not prefix else load_file(str(path))
    converted = convert_controlnet_checkpoint(state, dict(ref.config))
    if kind == "sdxl_base":  # diffusers' ControlNet converter leaves SDXL's vector embedding to its UNet table
        vector = DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"]
        converted.update({new: state[PREFIX + old] for new, old in vector.items()})
    ref.load_state_dict(converted, strict=True)
    return path, ref


def network_inputs(kind: str):
    """x, t, context, y (ours) and diffusers' added_cond_kwargs, for a 6×8 latent."""
    if kind == "sd1":
        g = torch.Generator().manual_seed(1)
        return (torch.randn(2, 4, 6, 8, generator=g), torch.tensor([999.0, 301.5]),
                torch.randn(2, 77, TINY_SD1_UNET.context_dim, generator=g), None, None)
    x, t, context, y, added = inputs(TINY_BASE_UNET, size=8)
    return x[..., :6, :], t, context, y, added


def conditioning(kind: str) -> list:
    """CONDITIONING the model accepts (the UNet call below gets its own inputs)."""
    return [[torch.zeros(1, 77, CONFIGS[kind].context_dim), {"pooled_output": torch.zeros(1, 32)}]]


def model_value(kind: str):
    checkpoint = load_checkpoint(demo_models()[kind], with_text=False)
    return family_of(kind).model(checkpoint, kind)


def controlled(model, conditioning):
    """Our UNet call with the ``control`` the conditioning carries (the sampler's path: prepare, then eps)."""
    control = conditioning[0][1]["control"]
    model.prepare(conditioning, "positive", (6, 8))  # checks that the ControlNets fit the model
    x, t, context, y, _ = network_inputs(model.kind)
    with torch.no_grad():
        return model.eps_fn()(x, t, context, y, control=control)


def reference(unet, controls: list, kind: str) -> torch.Tensor:
    """diffusers: each ControlNet's residuals for its hint × its strength (``controls``: (net, strength, hint)),
    summed, injected into the UNet."""
    x, t, context, _, added = network_inputs(kind)
    with torch.no_grad():
        down, mid = None, 0
        for net, strength, hint in controls:
            d, m = net(x, t, context, hint, conditioning_scale=strength, added_cond_kwargs=added, return_dict=False)
            down = d if down is None else [a + b for a, b in zip(down, d)]
            mid = mid + m
        return unet(x, t, context, added_cond_kwargs=added, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid).sample


def hint_image(seed: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """An IMAGE [1, 48, 64, 3] at the latent's size × 8 (so no resize) and the same pixels as diffusers takes them."""
    image = torch.rand(1, 48, 64, 3, generator=torch.Generator().manual_seed(seed))
    return image, image.movedim(-1, 1).expand(2, -1, -1, -1)


@pytest.mark.parametrize("kind,layout", [(kind, layout) for kind in ("sdxl_base", "sd1")
                                         for layout in ("original", "original_bare", "diffusers", "diffusers_file")])
def test_controlnet_parity_with_diffusers(tmp_path, kind, layout):
    path, ref = write_controlnet(kind, layout, tmp_path, seed=11)
    net = load_controlnet(str(path), torch.float32, "test")
    model, unet = model_value(kind), reference_unet(kind)
    image, pixels = hint_image()
    got = controlled(model, apply(conditioning(kind), net, image, 0.8))
    want = reference(unet, [(ref, 0.8, pixels)], kind)
    assert rel_err(got, want) <= TOL, layout
    # the control reaches the output well above the tolerance
    plain = reference(unet, [(ref, 0.0, pixels)], kind)
    assert rel_err(got, plain) > 100 * TOL


# full-size diffusers ControlNetModel configs: diffusers' controlnet-canny-sdxl-1.0, lllyasviel's sd-controlnet-*,
# thibaud's controlnet-sd21-*
FULL_SIZE = {
    "sdxl": (SDXL_BASE_UNET, 1251.0, dict(
        block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"), cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816)),
    "sd15": (SD15_UNET, 361.3, dict(cross_attention_dim=768)),
    "sd21": (SD21_UNET, 364.2, dict(cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                                    use_linear_projection=True)),
}


@pytest.mark.parametrize("name", sorted(FULL_SIZE))
def test_full_size_layouts_match_diffusers(name):
    """On the meta device: our full-size ControlNet's tensors, under their diffusers names, are diffusers' own, and
    the config comes back from its config.json and from the shapes alone (a weights file without it)."""
    from diffusers import ControlNetModel as Reference

    unet, millions, kwargs = FULL_SIZE[name]
    with torch.device("meta"):
        ref = Reference(**kwargs)
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    cfg = ControlNetConfig(unet)
    with empty_modules():
        ours = ControlNetModel(cfg)
    names = diffusers_names(cfg)
    assert {names[k]: tuple(v.shape) for k, v in ours.state_dict().items()} == want
    assert round(sum(v.numel() for v in ours.state_dict().values()) / 1e6, 1) == millions
    assert config_from_diffusers_shapes(want) == cfg and unet_config_from_diffusers(dict(ref.config)) == unet


def test_chained_controlnets_add_up(tmp_path):
    (first, ref_a), (second, ref_b) = (write_controlnet("sdxl_base", layout, tmp_path / layout, seed)
                                       for layout, seed in (("original", 1), ("diffusers", 2)))
    a, b = (load_controlnet(str(p), torch.float32, "test") for p in (first, second))
    image_a, pixels_a = hint_image(5)
    image_b, pixels_b = hint_image(6)
    cond = apply(conditioning("sdxl_base"), a, image_a, 0.6)
    cond = apply(cond, b, image_b, 1.3)
    got = controlled(model_value("sdxl_base"), cond)
    want = reference(reference_unet("sdxl_base"), [(ref_a, 0.6, pixels_a), (ref_b, 1.3, pixels_b)], "sdxl_base")
    assert rel_err(got, want) <= TOL


def test_a_controlnet_for_another_family_is_refused(tmp_path):
    path, _ = write_controlnet("sd1", "original", tmp_path, seed=3)
    net = load_controlnet(str(path), torch.float32, "test")
    image, _ = hint_image()
    with pytest.raises(ValueError, match="made for another UNet"):
        model_value("sdxl_base").prepare(apply(conditioning("sdxl_base"), net, image, 1.0), "positive", (6, 8))


def test_a_diff_controlnet_is_added_to_its_base_unet(tmp_path):
    """A "diff" file stores the ControlNet's change from its base UNet (and a ``difference`` marker)."""
    path, _ = write_controlnet("sd1", "original", tmp_path, seed=4)
    whole = load_controlnet(str(path), torch.float32, "test").model.state_dict()
    base = model_value("sd1").unet.state_dict()
    diff = {k: v - base[k[len(PREFIX):]] if k[len(PREFIX):] in base else v for k, v in load_file(str(path)).items()}
    save_file({**diff, "difference": torch.zeros(1)}, str(tmp_path / "diff.safetensors"))
    with pytest.raises(ValueError, match="a diff ControlNet .* Load ControlNet Model \\(diff\\)"):
        load_controlnet(str(tmp_path / "diff.safetensors"), torch.float32, "test")
    got = load_controlnet(str(tmp_path / "diff.safetensors"), torch.float32, "test", base=model_value("sd1").unet)
    assert sum(k in base for k in whole) > 100  # the encoder's weights were stored as changes
    for key, value in got.model.state_dict().items():
        assert torch.allclose(value, whole[key], atol=1e-6), key


def test_files_that_are_not_controlnets_say_what_they_are(tmp_path):
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(4, 4)}, str(lora))
    with pytest.raises(ValueError, match="Load: lora.safetensors: a Control-LoRA"):
        load_controlnet(str(lora), torch.float32, "Load")
    other = tmp_path / "other.safetensors"
    save_file({"something.weight": torch.zeros(4)}, str(other))
    with pytest.raises(ValueError, match="found no ControlNet"):
        load_controlnet(str(other), torch.float32, "Load")


def test_make_demo_model_writes_an_sdxl_controlnet_in_the_diffusers_layout(tmp_path, monkeypatch):
    from diffusers import ControlNetModel as Reference

    import nodes.demo
    from server.cli import main

    monkeypatch.setattr(nodes.demo, "make_demo_models", lambda folder: {})  # the checkpoints have their own tests
    assert main(["make-demo-model", str(tmp_path / "models" / "checkpoints")]) == 0
    path = tmp_path / "models" / "controlnet" / DEMO_CONTROLNET
    Reference.from_unet(diffusers_unet("base")).load_state_dict(load_file(str(path)), strict=True)
    net = load_controlnet(str(path), torch.float32, "test")
    assert net.model.config == ControlNetConfig(TINY_BASE_UNET)  # made for the demo base


def test_serve_writes_the_demo_controlnet_only_into_an_empty_folder(tmp_path):
    from nodes.catalog import ensure_demo_controlnet

    ensure_demo_controlnet(tmp_path / "controlnet")  # what serve does without --no-demo-models
    assert [p.name for p in (tmp_path / "controlnet").iterdir()] == [DEMO_CONTROLNET]
    (tmp_path / "mine" / "canny").mkdir(parents=True)
    (tmp_path / "mine" / "canny" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    ensure_demo_controlnet(tmp_path / "mine")  # a diffusers folder counts as a ControlNet
    assert not (tmp_path / "mine" / DEMO_CONTROLNET).exists()


# -- the nodes through the CLI ------------------------------------------------------------------------------------

STEPS, SPLIT = 10, 5  # normal schedule, 10 steps: timesteps 999, 888, … ; 50 % (t 499.5) falls between steps 4 and 5


def graph() -> dict:
    """Demo SDXL base with the demo ControlNet on a Canny hint: KSampler runs with the control over 50-100 %, over
    0-50 %, over everything and without; KSamplerAdvanced pairs give the split runs by hand."""
    g = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "demo_sdxl_base.safetensors"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "a red barn"}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "blurry"}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 1}},
        "load": {"class_type": "LoadImage", "inputs": {"image": "square.png"}},
        "edges": {"class_type": "Canny", "inputs": {"image": ["load", 0], "low_threshold": 0.4,
                                                     "high_threshold": 0.8}},
        "cn": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": DEMO_CONTROLNET}},
        "diff": {"class_type": "DiffControlNetLoader", "inputs": {"model": ["ckpt", 0],
                                                                  "control_net_name": DEMO_CONTROLNET}},
        "old": {"class_type": "ControlNetApply", "inputs": {"conditioning": ["pos", 0], "control_net": ["diff", 0],
                                                            "image": ["edges", 0], "strength": 1.0}},
    }

    def advanced(name, start, end, strength=1.0):
        g[name] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["pos", 0], "negative": ["neg", 0], "control_net": ["cn", 0], "image": ["edges", 0],
            "strength": strength, "start_percent": start, "end_percent": end, "vae": ["ckpt", 2]}}

    def save(name, sampler):
        g[name + "_image"] = {"class_type": "VAEDecode", "inputs": {"samples": [sampler, 0], "vae": ["ckpt", 2]}}
        g[name + "_save"] = {"class_type": "SaveImage", "inputs": {"images": [name + "_image", 0],
                                                                   "filename_prefix": name}}

    def ksampler(name, cond, neg_slot=1):
        g[name + "_sampler"] = {"class_type": "KSampler", "inputs": {
            "model": ["ckpt", 0], "positive": [cond, 0], "negative": [cond if neg_slot else "neg", neg_slot],
            "latent_image": ["latent", 0], "seed": 3, "steps": STEPS, "cfg": 4.0, "sampler_name": "euler",
            "scheduler": "normal", "denoise": 1.0}}
        save(name, name + "_sampler")

    def split(name, first, second):
        """KSamplerAdvanced over steps 0-5 with ``first``'s conditioning, then 5-10 with ``second``'s."""
        for stage, cond, (start, end) in (("a", first, (0, SPLIT)), ("b", second, (SPLIT, STEPS))):
            pos, neg = (cond, 0), (cond, 1)
            if cond is None:
                pos, neg = ("pos", 0), ("neg", 0)
            g[f"{name}_{stage}"] = {"class_type": "KSamplerAdvanced", "inputs": {
                "model": ["ckpt", 0], "positive": list(pos), "negative": list(neg),
                "latent_image": ["latent", 0] if stage == "a" else [f"{name}_a", 0],
                "add_noise": "enable" if stage == "a" else "disable", "noise_seed": 3, "steps": STEPS, "cfg": 4.0,
                "sampler_name": "euler", "scheduler": "normal", "start_at_step": start, "end_at_step": end,
                "return_with_leftover_noise": "enable" if stage == "a" else "disable"}}
        save(name, f"{name}_b")

    advanced("late", 0.5, 1.0)
    advanced("early", 0.0, 0.5)
    advanced("always", 0.0, 1.0)
    advanced("off", 0.0, 1.0, strength=0.0)
    for name in ("late", "early", "always", "off"):
        ksampler(name, name)
    ksampler("plain", "pos", neg_slot=0)
    ksampler("old_apply", "old", neg_slot=0)
    split("late_by_hand", None, "always")
    split("early_by_hand", "always", None)
    return g


@pytest.mark.slow
def test_controlnet_nodes_run_through_latentgraph_run(tmp_path, tmp_path_factory):
    models = demo_models_dir(tmp_path_factory)
    (tmp_path / "input").mkdir()
    square = np.zeros((48, 64, 3), np.uint8)
    square[12:36, 20:44] = 255
    Image.fromarray(square).save(tmp_path / "input" / "square.png")
    path = tmp_path / "controlnet.json"
    path.write_text(json.dumps(graph()))
    rc, stdout, err = cli("run", str(path), "--models", models, "--input", str(tmp_path / "input"),
                          "--out", str(tmp_path / "out"), "-q")
    assert rc == 0, err
    images = {}
    for line in stdout.splitlines():
        if line.endswith(".png"):
            with Image.open(line) as img:
                images[line.rsplit("/", 1)[-1].rsplit("_", 2)[0]] = np.asarray(img.convert("RGB")).astype(np.int16)
    # the control steers only within its step range: exactly the run split by hand where it starts or stops
    assert np.array_equal(images["late"], images["late_by_hand"])
    assert np.array_equal(images["early"], images["early_by_hand"])
    assert np.array_equal(images["off"], images["plain"])  # strength 0 leaves the conditioning as it was
    distinct = ["plain", "late", "early", "always"]
    for i, a in enumerate(distinct):
        for b in distinct[i + 1:]:
            assert np.abs(images[a] - images[b]).max() > 2, (a, b)
    # Apply ControlNet (OLD) on the positive alone: the sampler gives the negative the same control
    assert np.array_equal(images["old_apply"], images["always"])


def test_canny_marks_the_edges_of_a_square(registry):
    from nodes.node import Context

    image = torch.zeros(1, 32, 32, 3)
    image[:, 8:24, 8:24] = 1.0
    (edges,) = registry["Canny"].call(Context(node_id="1"), {"image": image, "low_threshold": 0.4,
                                                             "high_threshold": 0.8}).outputs
    assert edges.shape == (1, 32, 32, 3) and set(edges.unique().tolist()) == {0.0, 1.0}
    rows, cols = edges[0, ..., 0].nonzero(as_tuple=True)
    assert rows.min() >= 6 and rows.max() <= 25 and cols.min() >= 6 and cols.max() <= 25  # round the square only
    assert edges[0, 12:20, 12:20].sum() == 0 and edges[0, 8:24, 7:9].sum() > 0  # not inside it; on its left side
    with pytest.raises(ValueError, match="Canny: input 'low_threshold'"):
        registry["Canny"].call(Context(node_id="1"), {"image": image, "low_threshold": 0.9, "high_threshold": 0.2})
