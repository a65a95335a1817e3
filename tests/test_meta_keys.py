"""Full-size SDXL base and refiner built on the meta device: every key and shape equals the real checkpoints'
(shared/reference/keys/*.txt beside the repository, generated from Stability-AI's own classes)."""
import importlib
import json
from pathlib import Path

import pytest
import torch

from nodes.checkpoints import detect
from nodes.families.ldm import UNET_PREFIX, VAE_PREFIX, infer_unet_config, infer_vae_config
from nodes.sdxl.configs import SDXL_BASE_UNET, SDXL_REFINER_UNET, SDXL_VAE
from nodes.sdxl.unet import UNetModel
from nodes.sdxl.vae import AutoencoderKL

KEYS = Path(__file__).parents[1].parent / "shared" / "reference" / "keys"
FILES = {"sdxl_base": "sd_xl_base_1.0.txt", "sdxl_refiner": "sd_xl_refiner_1.0.txt"}
UNETS = {"sdxl_base": SDXL_BASE_UNET, "sdxl_refiner": SDXL_REFINER_UNET}
PARAMS = {"sdxl_base": 2_567_463_684, "sdxl_refiner": 2_259_526_660}

pytestmark = pytest.mark.skipif(not KEYS.is_dir(), reason=f"reference key lists not found at {KEYS}")


def reference(kind) -> dict[str, tuple]:
    out = {}
    for line in (KEYS / FILES[kind]).read_text().splitlines():
        key, shape = line.split("\t")
        out[key] = tuple(json.loads(shape))
    return out


def meta_shapes(module, prefix) -> dict[str, tuple]:
    return {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}


def build_meta(kind):
    with torch.device("meta"):
        return UNetModel(UNETS[kind]), AutoencoderKL(SDXL_VAE)


def text_shapes(kind):
    try:
        text = importlib.import_module("nodes.sdxl.text")
    except ModuleNotFoundError:
        return None
    return getattr(text, "full_size_state_shapes", lambda _: None)(kind)


@pytest.mark.parametrize("kind", FILES)
def test_unet_and_vae_keys_and_shapes(kind):
    ref = reference(kind)
    unet, vae = build_meta(kind)
    ours = {**meta_shapes(unet, UNET_PREFIX), **meta_shapes(vae, VAE_PREFIX)}
    ref_part = {k: v for k, v in ref.items() if k.startswith((UNET_PREFIX, VAE_PREFIX))}
    assert sorted(set(ref_part) - set(ours)) == [], "missing"
    assert sorted(set(ours) - set(ref_part)) == [], "unexpected"
    assert {k: v for k, v in ours.items() if ref_part[k] != v} == {}, "shapes"
    assert sum(p.numel() for p in unet.parameters()) == PARAMS[kind]
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863


@pytest.mark.parametrize("kind", FILES)
def test_whole_checkpoint_keys_and_shapes(kind):
    """UNet + VAE + H2b's text encoders: all 2515 / 1858 keys, none missing, none unexpected."""
    text = text_shapes(kind)
    if text is None:
        pytest.skip("nodes.sdxl.text.full_size_state_shapes is not available yet")
    unet, vae = build_meta(kind)
    ours = {**meta_shapes(unet, UNET_PREFIX), **meta_shapes(vae, VAE_PREFIX), **{k: tuple(v) for k, v in text.items()}}
    assert ours == reference(kind)


@pytest.mark.parametrize("kind", FILES)
def test_detect_and_infer_from_real_shapes(kind):
    """The real key lists are detected as their kind and give back the presets' configs."""
    ref = reference(kind)
    assert detect(ref) == kind
    unet_shapes = {k[len(UNET_PREFIX):]: v for k, v in ref.items() if k.startswith(UNET_PREFIX)}
    assert infer_unet_config(unet_shapes) == UNETS[kind]
    vae_shapes = {k[len(VAE_PREFIX):]: v for k, v in ref.items() if k.startswith(VAE_PREFIX)}
    assert infer_vae_config(vae_shapes) == SDXL_VAE
