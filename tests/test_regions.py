"""Area and mask conditioning (ComfyUI's ConditioningSetArea / SetAreaPercentage / SetAreaStrength / SetMask): the
sampler's per-region combination against hand-computed values on a toy network whose output depends on the whole
crop it sees, the regions resolved from CONDITIONING, and the nodes through `latentgraph run` on the demo SDXL base."""
import json

import pytest
import torch

from nodes.sampling.guidance import cfg_denoiser, guidance_options
from nodes.sampling.schedules import DiscreteEps
from sdxl_helpers import cli, demo_models_dir

MS = DiscreteEps()
SIGMA = torch.full((1,), 3.1686)
X = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))


class SpatialEps:
    """ε = 0.3·x_in + the mean of x_in over the crop it is given + the context's mean: a crop changes its output."""

    def __init__(self):
        self.shapes = []

    def __call__(self, x_in, t, context, y=None):
        self.shapes.append(tuple(x_in.shape))
        return 0.3 * x_in + x_in.mean(dim=(2, 3), keepdim=True) + context.mean(dim=(1, 2)).view(-1, 1, 1, 1)


def denoised(x, value):
    """D of SpatialEps for a context of `value` on the latent (or crop) x, by hand: x − σ·ε(x / √(σ²+1))."""
    s = float(SIGMA)
    x_in = x / (s * s + 1) ** 0.5
    return x - s * (0.3 * x_in + x_in.mean(dim=(2, 3), keepdim=True) + value)


def entry(value, **guidance):
    return {"context": torch.full((1, 77, 8), float(value)), **guidance}


def test_area_entry_runs_on_its_crop_and_fades_in_at_inner_edges():
    eps = SpatialEps()
    area = (8, 8, 4, 4)  # h, w, y, x: every edge inside the 16×16 latent
    d = cfg_denoiser(eps, MS, [entry(1.0), entry(-2.0, area=area, strength=0.5)], [], cfg=1.0)(X, SIGMA)
    # 8 cells → a 2-cell fade on each inner edge: 0.5 then 1 (ComfyUI's ramp), corners multiplied
    ramp = torch.tensor([0.5, 1, 1, 1, 1, 1, 1, 0.5])
    weight = 0.5 * ramp[:, None] * ramp[None, :]
    full, crop = denoised(X, 1.0), denoised(X[..., 4:12, 4:12], -2.0)
    want = full.clone()
    want[..., 4:12, 4:12] = (full[..., 4:12, 4:12] + weight * crop) / (1 + weight)
    assert torch.allclose(d, want, atol=1e-6)
    assert sorted(eps.shapes) == [(1, 4, 8, 8), (1, 4, 16, 16)]  # the area entry saw its crop alone


def test_area_at_the_border_has_no_fade_and_uncovered_cells_are_zero():
    d = cfg_denoiser(SpatialEps(), MS, [entry(3.0, area=(16, 6, 0, 10), strength=2.0)], [], cfg=1.0)(X, SIGMA)
    # right edge on the border: no fade; left edge inside, but 6 cells fade over 6 // 4 = 1 cell, at weight 1
    assert torch.allclose(d[..., 10:], denoised(X[..., 10:], 3.0), atol=1e-6)
    assert d[..., :10].abs().max() == 0  # no entry covers these cells: D is 0 there, as in ComfyUI


def test_mask_entry_weights_each_cell_by_mask_times_strengths():
    mask = torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(1))
    mask[..., :4] = 0
    d = cfg_denoiser(SpatialEps(), MS, [entry(1.0, strength=2.0), entry(-1.0, mask=mask * 0.5, strength=3.0)], [],
                     cfg=1.0)(X, SIGMA)
    w = mask * 0.5 * 3.0
    want = (2.0 * denoised(X, 1.0) + w * denoised(X, -1.0)) / (2.0 + w)
    assert torch.allclose(d, want, atol=1e-6)
    assert torch.equal(d[..., :4], denoised(X, 1.0)[..., :4])


def test_an_area_gets_a_counterpart_in_the_other_branch():
    """ComfyUI pairs an area entry with the other branch's smallest entry containing it: the negative is also run on
    the crop, with the area's weights."""
    eps = SpatialEps()
    area = (8, 8, 4, 4)
    d = cfg_denoiser(eps, MS, [entry(1.0), entry(-2.0, area=area)], [entry(0.5)], cfg=3.0)(X, SIGMA)
    ramp = torch.tensor([0.5, 1, 1, 1, 1, 1, 1, 0.5])
    weight = ramp[:, None] * ramp[None, :]

    def branch(full_value, crop_value):
        full, out = denoised(X, full_value), denoised(X, full_value).clone()
        crop = denoised(X[..., 4:12, 4:12], crop_value)
        out[..., 4:12, 4:12] = (full[..., 4:12, 4:12] + weight * crop) / (1 + weight)
        return out

    pos, neg = branch(1.0, -2.0), branch(0.5, 0.5)
    assert torch.allclose(d, neg + 3.0 * (pos - neg), atol=1e-5)
    # two calls: the whole latent (negative, positive) and the crops (the area and its counterpart)
    assert sorted(eps.shapes) == [(2, 4, 8, 8), (2, 4, 16, 16)]


def test_regions_resolve_against_the_latent():
    assert guidance_options({"area": ("percentage", 0.5, 0.25, 0.5, 0.75)}, (16, 16))["area"] == (8, 4, 8, 12)
    assert guidance_options({"area": (20, 20, 8, 0)}, (16, 16))["area"] == (8, 16, 8, 0)  # cut at the latent's edge
    with pytest.raises(ValueError, match="outside the 16×16-cell latent"):
        guidance_options({"area": (8, 8, 0, 16)}, (16, 16))
    mask = torch.zeros(1, 64, 64)
    mask[0, 8:24, 40:48] = 1  # pixels → at 16×16: rows 2..5, columns 10..11
    opts = guidance_options({"mask": mask, "mask_strength": 0.5, "set_area_to_bounds": True}, (16, 16))
    assert opts["mask"].shape == (1, 16, 16) and opts["mask"].max() == 0.5
    h, w, y, x = opts["area"]
    assert (y, x) == (2, 10) and (h, w) == (8, 6)  # 4×2 cells, widened to 8×8, cut at the latent's right edge


# -- the nodes through the CLI ------------------------------------------------------------------------------------

def graph(regions: dict, positive: str) -> dict:
    """Demo SDXL base, a whole-picture prompt combined with region prompts, KSampler (cfg 4, 3 steps), decode, save."""
    g = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "demo_sdxl_base.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a landscape"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a red barn"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "blurry"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 96, "batch_size": 1}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "regions"}},
    }
    g.update(regions)
    g["8"] = {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "positive": [positive, 0], "negative": ["4", 0], "latent_image": ["5", 0], "seed": 3,
        "steps": 3, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}
    return g


def run(tmp_path, models, name, regions, positive="7") -> bytes:
    from PIL import Image

    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(graph(regions, positive)))
    out = tmp_path / name
    rc, stdout, err = cli("run", str(path), "--models", models, "--out", str(out), "-q")
    assert rc == 0, err
    (png,) = [line for line in stdout.splitlines() if line.endswith(".png")]
    with Image.open(png) as img:
        return img.convert("RGB").tobytes()


@pytest.mark.slow
def test_region_nodes_run_through_latentgraph_run(tmp_path, tmp_path_factory):
    """Every region node in one graph; a whole-picture area, an all-ones mask and strength 1 leave the picture as the
    plain prompt makes it, a real region changes it."""
    models = demo_models_dir(tmp_path_factory)
    plain = run(tmp_path, models, "plain", {"7": {"class_type": "ConditioningCombine", "inputs": {
        "conditioning_1": ["2", 0], "conditioning_2": ["3", 0]}}})
    whole = run(tmp_path, models, "whole", {
        "6": {"class_type": "ConditioningSetArea", "inputs": {"conditioning": ["3", 0], "width": 128, "height": 96,
                                                              "x": 0, "y": 0, "strength": 1.0}},
        "11": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 128, "height": 96}},
        "12": {"class_type": "ConditioningSetMask", "inputs": {"conditioning": ["2", 0], "mask": ["11", 0],
                                                               "strength": 1.0, "set_cond_area": "default"}},
        "13": {"class_type": "ConditioningSetAreaStrength", "inputs": {"conditioning": ["6", 0], "strength": 1.0}},
        "7": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["12", 0],
                                                             "conditioning_2": ["13", 0]}}})
    assert whole == plain
    region = run(tmp_path, models, "region", {
        "6": {"class_type": "ConditioningSetAreaPercentage", "inputs": {
            "conditioning": ["3", 0], "width": 0.5, "height": 1.0, "x": 0.5, "y": 0.0, "strength": 1.5}},
        "11": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 48}},
        "12": {"class_type": "ConditioningSetMask", "inputs": {"conditioning": ["2", 0], "mask": ["11", 0],
                                                               "strength": 0.8, "set_cond_area": "mask bounds"}},
        "7": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["2", 0], "conditioning_2": ["6", 0]}},
        "14": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["7", 0],
                                                              "conditioning_2": ["12", 0]}}}, positive="14")
    assert region != plain
