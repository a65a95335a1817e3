"""SD3's text nodes through `latentgraph run` on the demo SD3 files: TripleCLIPLoader reads the standalone towers from
<models>/clip and <models>/text_encoders and, with CLIPTextEncodeSD3 given one prompt for all three, makes the same
image as the incl_clips checkpoint's own CLIP with plain CLIPTextEncode; empty_padding and the T5 prompt change it;
CLIPLoader and DualCLIPLoader take one or two towers with type sd3; errors name the node."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from nodes.demo import make_demo_text_encoders
from nodes.families import family_of
from nodes.node import Context
from sdxl_helpers import cli, environment, run_workflow

PROMPT = "a lighthouse on a cliff at dusk"
CLIP_FILES = ["demo_clip_l.safetensors", "demo_clip_g.safetensors", "demo_t5xxl_fp8_e4m3fn.safetensors"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """checkpoints/ with the demo SD3 checkpoints; CLIP-L and CLIP-G in clip/, T5 in text_encoders/ (ComfyUI reads
    both folders)."""
    models = tmp_path_factory.mktemp("sd3_models")
    for sub in ("checkpoints", "clip", "text_encoders"):
        (models / sub).mkdir()
    family_of("sd3").write_demo(models / "checkpoints", torch.float32)
    t5 = make_demo_text_encoders(models / "clip")["sd3_t5xxl"]  # what make-demo-model writes
    t5.rename(models / "text_encoders" / t5.name)
    return environment(str(models), tmp_path_factory.mktemp("run"))


def prompt(positive: dict, negative: dict, clip: dict | None = None,
           checkpoint: str = "demo_sd3_medium.safetensors") -> dict:
    """An SD3 text-to-image graph (API format): node 2 the CLIP loader (without one, the checkpoint's CLIP), 3 and 4
    the prompts."""
    link = ["2", 0] if clip else ["1", 1]
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        **({"2": clip} if clip else {}),
        "3": {**positive, "inputs": {**positive["inputs"], "clip": link}},
        "4": {**negative, "inputs": {**negative["inputs"], "clip": link}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["3", 0], "negative": ["4", 0], "latent_image": ["5", 0], "seed": 7,
            "steps": 3, "cfg": 4.5, "sampler_name": "euler", "scheduler": "sgm_uniform", "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "sd3_text"}},
    }


def encode(text: str) -> dict:
    return {"class_type": "CLIPTextEncode", "inputs": {"text": text}}


def encode_sd3(text: str, t5xxl: str | None = None, empty_padding: str = "empty_prompt") -> dict:
    return {"class_type": "CLIPTextEncodeSD3", "inputs": {"clip_l": text, "clip_g": text, "t5xxl": t5xxl or text,
                                                          "empty_padding": empty_padding}}


TRIPLE = {"class_type": "TripleCLIPLoader", "inputs": dict(zip(["clip_name1", "clip_name2", "clip_name3"], CLIP_FILES))}


def run(env, graph: dict, tmp_path, *sets: str) -> np.ndarray:
    path = tmp_path / f"graph{len(list(tmp_path.iterdir()))}.json"
    path.write_text(json.dumps(graph))
    (image,) = run_workflow(str(path), env, *sets).values()
    return np.asarray(Image.open(image).convert("RGB")).astype(np.int16)


@pytest.fixture(scope="module")
def triple(env, tmp_path_factory):
    """TripleCLIPLoader → CLIPTextEncodeSD3 (one prompt for all three encoders; the negative empty, padded)."""
    return run(env, prompt(encode_sd3(PROMPT), encode_sd3(""), TRIPLE), tmp_path_factory.mktemp("graphs"))


def test_triple_clip_loader_with_clip_text_encode_sd3_equals_the_checkpoint_clip(env, triple, tmp_path):
    """The incl_clips checkpoint's CLIP output and plain CLIPTextEncode: the same towers and the same conditioning,
    so the same pixels."""
    ours = run(env, prompt(encode(PROMPT), encode(""), checkpoint="demo_sd3_medium_incl_clips_t5xxlfp8.safetensors"),
               tmp_path)
    assert np.array_equal(ours, triple)


@pytest.mark.parametrize("change", ["4.empty_padding=none", "3.t5xxl=a red sports car", "3.clip_g=a red sports car"])
def test_each_encoder_and_empty_padding_reach_the_image(env, triple, tmp_path, change):
    """empty_padding "none" leaves an empty prompt's CLIP tokens out and gives T5 ``</s>`` alone; each encoder's own
    text reaches the image."""
    changed = run(env, prompt(encode_sd3(PROMPT), encode_sd3(""), TRIPLE), tmp_path, change)
    assert np.abs(changed - triple).max() > 0


@pytest.fixture
def call(env, registry):
    """One node run directly (its outputs are values, not images)."""
    def run_node(kind: str, **values):
        (out,) = registry[kind].call(Context("1", env), values).outputs
        return out
    return run_node


def test_clip_loader_type_sd3_loads_one_tower(call):
    """CLIPLoader with the T5 file from text_encoders/: T5's tokens alone, equal to the T5 part of the three-encoder
    conditioning (the tiny demo MMDiT cannot sample from one tower: its pooled width is the tiny towers')."""
    t5_only = call("CLIPLoader", clip_name=CLIP_FILES[2], type="sd3")
    ((context, extras),) = call("CLIPTextEncode", clip=t5_only, text=PROMPT)
    triple = call("TripleCLIPLoader", **TRIPLE["inputs"])
    ((full, _),) = call("CLIPTextEncodeSD3", clip=triple, **encode_sd3(PROMPT)["inputs"])
    assert t5_only.t5 is not None and t5_only.clip_l is None and t5_only.clip_g is None
    assert context.shape == (1, 77, full.shape[-1]) and torch.equal(context, full[:, 77:])
    assert not extras["pooled_output"].any()


def test_dual_clip_loader_type_sd3_without_t5(call):
    """DualCLIPLoader with CLIP-L and CLIP-G: the 77 CLIP tokens alone, zero-padded to SD3's 4096-wide context (the
    tiny demo MMDiT is narrower, so this is checked on the conditioning)."""
    dual = call("DualCLIPLoader", clip_name1=CLIP_FILES[1], clip_name2=CLIP_FILES[0], type="sd3", device="cpu")
    ((context, extras),) = call("CLIPTextEncode", clip=dual, text=PROMPT)
    ((full, full_extras),) = call("CLIPTextEncode", clip=call("TripleCLIPLoader", **TRIPLE["inputs"]), text=PROMPT)
    assert dual.t5 is None and dual.keep_on_cpu and context.shape == (1, 77, 4096)
    assert torch.equal(context[..., :64], full[:, :77, :64]) and not context[..., 64:].any()
    assert torch.equal(extras["pooled_output"], full_extras["pooled_output"])


def test_errors_name_the_node(env, tmp_path):
    graph = prompt(encode(PROMPT), encode(""), {**TRIPLE, "inputs": {**TRIPLE["inputs"], "clip_name2": CLIP_FILES[0]}})
    path = tmp_path / "two_clip_l.json"
    path.write_text(json.dumps(graph))
    rc, _, err = cli("run", str(path), "--models", env.models_dir, "--out", env.output_dir, "-q")
    assert rc != 0 and "TripleCLIPLoader" in err and "a second clip_l" in err, err

    graph = prompt(encode(PROMPT), encode(""))  # sd3_medium.safetensors holds no text encoders
    path.write_text(json.dumps(graph))
    rc, _, err = cli("run", str(path), "--models", env.models_dir, "--out", env.output_dir, "-q")
    assert rc != 0 and "TripleCLIPLoader" in err, err
