"""Every family's full-size single-file layout, built on the meta device, equals the real checkpoint's key list
(shared/reference/keys/*.txt, from the original classes), with the published parameter counts; detection names
each real layout's family; the shapes give back the family's configs."""
import json
from pathlib import Path

import pytest
import torch

from nodes.checkpoints import detect
from nodes.families import family_of
from nodes.families.ldm import UNET_PREFIX, infer_unet_config
from nodes.sdxl.text import CLIP_L, build_clip_l, build_open_clip
from nodes.sdxl.unet import UNetModel
from nodes.sdxl.vae import AutoencoderKL

KEYS = Path(__file__).parents[1].parent / "shared" / "reference" / "keys"
FILES = {"sd1": "v1-5-pruned-emaonly.txt", "sd2": "v2-1_768-ema-pruned.txt", "sdxl_base": "sd_xl_base_1.0.txt",
         "sdxl_refiner": "sd_xl_refiner_1.0.txt"}
NEW = ["sd1", "sd2"]  # the SDXL layouts' parts are checked in test_meta_keys

pytestmark = pytest.mark.skipif(not KEYS.is_dir(), reason=f"reference key lists not found at {KEYS}")


def reference(kind) -> dict[str, tuple]:
    out = {}
    for line in (KEYS / FILES[kind]).read_text().splitlines():
        if not line.startswith("#"):
            key, shape = line.split("\t")
            out[key] = tuple(json.loads(shape))
    return out


def params(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("kind", NEW)
def test_full_size_layout_is_the_real_files(kind):
    assert family_of(kind).full_size_shapes() == reference(kind)


@pytest.mark.parametrize("kind", FILES)
def test_detection_names_each_real_layout(kind):
    assert detect(reference(kind)) == kind


def test_sd15_parameter_counts_and_config():
    from nodes.families.sd1 import SD15_UNET, SD_VAE

    with torch.device("meta"):
        unet, vae, clip = UNetModel(SD15_UNET), AutoencoderKL(SD_VAE), build_clip_l(CLIP_L)
    assert (params(unet), params(vae), params(clip)) == (859_520_964, 83_653_863, 123_060_480)
    shapes = {k[len(UNET_PREFIX):]: v for k, v in reference("sd1").items() if k.startswith(UNET_PREFIX)}
    assert infer_unet_config(shapes, num_heads=family_of("sd1").num_heads) == SD15_UNET


def test_sd21_parameter_counts_and_config():
    from nodes.families.sd2 import OPENCLIP_H, SD21_UNET

    with torch.device("meta"):
        unet, text = UNetModel(SD21_UNET), build_open_clip(OPENCLIP_H)
    assert params(unet) == 865_910_724
    assert params(text) + 1 == 354_032_641  # + logit_scale, which the file keeps beside the tower
    shapes = {k[len(UNET_PREFIX):]: v for k, v in reference("sd2").items() if k.startswith(UNET_PREFIX)}
    assert infer_unet_config(shapes) == SD21_UNET
