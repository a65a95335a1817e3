"""LoRA on SD3 (nodes.families.sd3's LoRA names on our MMDiT, which keeps the original layout's fused qkv) against
diffusers, on the tiny demo SD3 in the real layouts, fp32:

- a random LoRA on every linear and conv layer of diffusers' ``SD3Transformer2DModel`` and on CLIP-L's and CLIP-G's
  linear layers, made with peft's ``LoraConfig`` and saved by ``StableDiffusion3Pipeline.save_lora_weights`` (the
  file people share from diffusers' SD3 trainers), is read by diffusers (``load_lora_weights`` + ``fuse_lora``) and
  by our LoraLoader, and the transformer's output and the prompt conditioning agree, at positive and negative
  strengths;
- the same weights renamed to kohya-ss's names, on diffusers' modules (``lora_transformer_…``, what SD3 trainers on
  diffusers' model write) and on the original MMDiT's (``lora_unet_joint_blocks_…_attn_qkv``, sd-scripts), where
  q, k and v join in one module and the final adaLN layers' halves are swapped: the rows each diffusers weight has in
  the original are found by diffusers' own original→diffusers converter, not by our mapping;
- LoraConfigs in the file's header (lora_alpha ≠ r, alpha_pattern, rsLoRA) and SD3.5 medium's MMDiT-X blocks;
- strength 0, the cached base left bit-identical (tests.test_lora's check), the demo LoRA, errors and warnings, and
  the SD3 demo workflow with a LoraLoader through ``latentgraph run``."""
from __future__ import annotations

import atexit
import copy
import functools
import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from nodes.node import Context
from sdxl_helpers import demo_models_dir, environment, run_workflow
from tests.oracles import demo_models, rel_err
from tests.test_lora import PROMPT, assert_lora_leaves_the_base_untouched, call, env  # noqa: F401 (env: fixture)
from tests.test_sd3 import (SD35_DIFFUSERS, diffusers_transformer, mmdit_inputs, reference_velocity, sd3_pipeline,
                            write_sd35_medium_tiny)
from tests.test_workflows import pixels, workflow_path

TOL = 1e-5
RANK = 4
CHECKPOINT = "demo_sd3_medium_incl_clips_t5xxlfp8.safetensors"
STRENGTHS = [(0.8, -0.6), (-0.6, 0.8)]
TEXT_LAYERS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
KOHYA_TEXT = {"text_encoder.": "lora_te1_", "text_encoder_2.": "lora_te2_"}


# ---- the LoRA file, as diffusers and peft write it ------------------------------------------------------------------

@functools.cache
def peft_lora_file(alpha: float = RANK, rslora: bool = False, alpha_pattern: tuple = ()) -> Path:
    """A rank-4 LoRA on every nn.Linear / nn.Conv2d of the demo's diffusers transformer and on both CLIP towers'
    attention and MLP layers, random by a seeded generator, saved by diffusers: ``transformer.…`` /
    ``text_encoder.…`` / ``text_encoder_2.…`` with ``lora_A`` / ``lora_B``. With lora_alpha = r (scale 1, what
    files without alpha mean) as most shared files are; with another ``alpha``, peft's per-module ``alpha_pattern``
    or rank-stabilised scaling, diffusers saves each part's LoraConfig in the file's header, as it does when asked."""
    from diffusers import StableDiffusion3Pipeline
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    pipe = sd3_pipeline()
    layers = [n for n, m in pipe.transformer.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    config = LoraConfig(r=RANK, lora_alpha=alpha, target_modules=layers, use_rslora=rslora,
                        alpha_pattern=dict(alpha_pattern))
    pipe.transformer.add_adapter(config)
    text_config = LoraConfig(r=RANK, lora_alpha=RANK, target_modules=TEXT_LAYERS)
    for tower in (pipe.text_encoder, pipe.text_encoder_2):  # peft's own injection: transformers' add_adapter, which
        inject_adapter_in_model(text_config, tower)  # diffusers' trainers call, wants peft ≥ 0.22
    randomize_lora((pipe.transformer, pipe.text_encoder, pipe.text_encoder_2), seed=12)
    folder = Path(tempfile.mkdtemp(prefix="latentgraph-sd3-lora-"))
    atexit.register(shutil.rmtree, folder, True)
    header = (alpha, rslora, alpha_pattern) != (RANK, False, ())  # diffusers then wants every part's config
    StableDiffusion3Pipeline.save_lora_weights(
        folder, transformer_lora_layers=get_peft_model_state_dict(pipe.transformer),
        text_encoder_lora_layers=get_peft_model_state_dict(pipe.text_encoder),
        text_encoder_2_lora_layers=get_peft_model_state_dict(pipe.text_encoder_2),
        **{f"{part}_lora_adapter_metadata": c.to_dict() if header else None
           for part, c in (("transformer", config), ("text_encoder", text_config), ("text_encoder_2", text_config))})
    return folder / "pytorch_lora_weights.safetensors"


def randomize_lora(modules, seed: int) -> None:
    """Draw the peft LoRA layers' A and B (peft starts B at zero) from a seeded generator, sized to move outputs
    clearly but not wildly."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in modules:
            for name, p in module.named_parameters():
                if ".lora_A." in name:
                    p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
                elif ".lora_B." in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.15)


@functools.cache
def original_rows() -> dict[str, tuple[str, torch.Tensor]]:
    """diffusers transformer layer → (the original MMDiT layer its weight comes from, its rows there), by diffusers'
    own converter: every original tensor is tagged with its index and row numbers and found again after conversion
    (q, k and v come out as row blocks of the fused qkv; the final adaLN layers with their halves swapped)."""
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    prefix = "model.diffusion_model."
    state = {k: v for k, v in load_file(str(demo_models()["sd3"])).items() if k.startswith(prefix)}
    keys = list(state)
    tagged = {k: (i * 100_000 + torch.arange(v.shape[0], dtype=torch.float64)).reshape(-1, *[1] * (v.ndim - 1))
              .expand(v.shape).clone() for i, (k, v) in enumerate(state.items())}
    rows = {}
    for k, v in convert_sd3_transformer_checkpoint_to_diffusers(tagged).items():
        if k.endswith(".weight") and v.ndim >= 2:
            tags = v.flatten(1)[:, 0].long()
            rows[k[:-len(".weight")]] = (keys[int(tags[0]) // 100_000][len(prefix):-len(".weight")], tags % 100_000)
    return rows


def kohya_file(path: Path, peft_file: Path, on_original: bool) -> Path:
    """The PEFT file's weights under kohya-ss names (``lora_down`` / ``lora_up`` / ``alpha`` = rank, so scale 1):
    the transformer's on diffusers' modules (``lora_transformer_<module>``) or, ``on_original``, on the original
    MMDiT's (``lora_unet_<module>``, sd-scripts' SD3 names): the diffusers modules that make up one original weight
    join in one LoRA module, their downs stacked and their ups placed on their rows, so the change is the same."""
    peft = load_file(str(peft_file))
    modules = {k[:-len(".lora_A.weight")] for k in peft if k.endswith(".lora_A.weight")}
    out = {}

    def put(name, down, up):
        out.update({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                    f"{name}.alpha": torch.tensor(float(down.shape[0]))})

    joined: dict[str, list] = {}
    for module in sorted(modules):
        down, up = peft[module + ".lora_A.weight"], peft[module + ".lora_B.weight"]
        text = next((p for p in KOHYA_TEXT if module.startswith(p)), None)
        if text:
            put(KOHYA_TEXT[text] + module[len(text):].replace(".", "_"), down, up)
        elif not on_original:
            put("lora_transformer_" + module[len("transformer."):].replace(".", "_"), down, up)
        else:
            layer, rows = original_rows()[module[len("transformer."):]]
            joined.setdefault(layer, []).append((rows, down, up))
    shapes = {k[len("model.diffusion_model."):]: v.shape for k, v in load_file(str(demo_models()["sd3"])).items()}
    for layer, parts in joined.items():
        down = torch.cat([d for _, d, _ in parts])
        up = torch.zeros(shapes[layer + ".weight"][0], down.shape[0], *parts[0][2].shape[2:])
        for j, (rows, _, part_up) in enumerate(parts):
            up[rows, j * RANK:(j + 1) * RANK] = part_up
        put("lora_unet_" + layer.replace(".", "_"), down, up)
    save_file(out, str(path))
    return path


# ---- diffusers with the LoRA fused, and ours ------------------------------------------------------------------------

def outputs(pipe) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(transformer velocity, prompt embeddings, pooled embedding). T5 gets 77 tokens, ComfyUI's T5 rule for short
    prompts (tests.test_sd3.test_txt2img_matches_stable_diffusion_3_pipeline lines the conventions up)."""
    with torch.no_grad():
        velocity = reference_velocity(pipe.transformer, *mmdit_inputs())
        embeds, _, pooled, _ = pipe.encode_prompt(prompt=PROMPT, prompt_2=None, prompt_3=None, device="cpu",
                                                  num_images_per_prompt=1, do_classifier_free_guidance=False,
                                                  max_sequence_length=77)
    return velocity, embeds, pooled


@functools.cache
def untouched_pipeline():
    return sd3_pipeline()


@functools.cache
def reference(path: Path | None, strength_model: float = 0.0, strength_clip: float = 0.0):
    """diffusers' outputs with the LoRA file loaded by ``load_lora_weights`` and fused at these strengths (None: no
    LoRA)."""
    pipe = copy.deepcopy(untouched_pipeline())
    if path is not None:
        pipe.load_lora_weights(str(path))
        pipe.fuse_lora(components=["transformer"], lora_scale=strength_model)
        pipe.fuse_lora(components=["text_encoder", "text_encoder_2"], lora_scale=strength_clip)
        pipe.unload_lora_weights()
    return outputs(pipe)


def ours(env, lora_name: str, strength_model: float, strength_clip: float):
    """The same three from CheckpointLoaderSimple → LoraLoader → the patched MMDiT and CLIPTextEncode."""
    ctx = Context("1", env)
    model, clip, _ = call(ctx, "CheckpointLoaderSimple", ckpt_name=CHECKPOINT)
    model, clip = call(ctx, "LoraLoader", model=model, clip=clip, lora_name=lora_name, strength_model=strength_model,
                       strength_clip=strength_clip)
    (cond,) = call(ctx, "CLIPTextEncode", clip=clip, text=PROMPT)
    with torch.no_grad():
        velocity = model.module(*mmdit_inputs())
    return velocity, cond[0][0], cond[0][1]["pooled_output"]


def assert_matches(got, want, untouched):
    for a, b, base, what in zip(got, want, untouched, ("transformer", "text", "pooled")):
        assert rel_err(a, b) <= TOL, (what, rel_err(a, b))
        assert rel_err(base, b) > 100 * TOL, (what, rel_err(base, b))  # the LoRA changes it far beyond the tolerance


# ---- parity ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("strengths", STRENGTHS)
@pytest.mark.parametrize("fmt", ["peft", "kohya_diffusers_names", "kohya_original_names"])
def test_sd3_lora_matches_diffusers_load_lora_weights_and_fuse_lora(env, fmt, strengths):
    source = peft_lora_file()
    path = Path(env.models_dir) / "loras" / f"sd3_{fmt}.safetensors"
    if fmt == "peft":
        shutil.copy(source, path)
    else:
        kohya_file(path, source, on_original=fmt == "kohya_original_names")
    assert_matches(ours(env, path.name, *strengths), reference(source, *strengths), reference(None))


def test_peft_alphas_from_the_file_header_match_diffusers(env):
    """diffusers' header (each part's LoraConfig): the transformer's lora_alpha 2r, so twice the change, and
    rank-stabilised scaling with an alpha_pattern for some modules; diffusers builds its LoRA layers from the same
    header."""
    at_scale_1 = reference(peft_lora_file(), 0.8, -0.6)[0]
    for i, source in enumerate((peft_lora_file(alpha=2 * RANK),
                                peft_lora_file(rslora=True, alpha_pattern=(("proj_out", 1), ("ff.net.2", 6))))):
        assert "lora_adapter_metadata" in safe_open(str(source), "pt").metadata()
        shutil.copy(source, Path(env.models_dir) / "loras" / f"header_{i}.safetensors")
        got, want = ours(env, f"header_{i}.safetensors", 0.8, -0.6), reference(source, 0.8, -0.6)
        assert all(rel_err(a, b) <= TOL for a, b in zip(got, want)), [rel_err(a, b) for a, b in zip(got, want)]
        assert rel_err(at_scale_1, want[0]) > 100 * TOL  # the header's scales make a difference


def test_the_file_has_the_layer_names_sd3_loras_use_and_q_k_v_land_in_row_blocks_of_qkv():
    """The file holds the names people's SD3 LoRAs use, and each original qkv is changed in three row blocks."""
    names = {k.rsplit(".lora_", 1)[0] for k in load_file(str(peft_lora_file()))}
    for layer in ("attn.to_q", "attn.add_q_proj", "attn.to_out.0", "attn.to_add_out", "ff.net.0.proj",
                  "ff_context.net.0.proj", "norm1.linear", "norm1_context.linear"):
        assert f"transformer.transformer_blocks.0.{layer}" in names, layer
    assert {"transformer.proj_out", "transformer.norm_out.linear", "transformer.pos_embed.proj",
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
            "text_encoder_2.text_model.encoder.layers.0.mlp.fc1"} <= names
    from nodes.families.sd3 import TINY_MMDIT, mmdit_lora_keys
    keys = mmdit_lora_keys(TINY_MMDIT)
    qkv = [keys[f"transformer.transformer_blocks.1.attn.{p}"] for p in ("add_q_proj", "add_k_proj", "add_v_proj")]
    assert {t.weight for t in qkv} == {"joint_blocks.1.context_block.attn.qkv.weight"}
    assert [t.rows for t in qkv] == [(0, 128), (128, 256), (256, 384)]


def test_sd35_lora_on_mmdit_x_blocks_matches_diffusers(tmp_path):
    """SD3.5 medium's MMDiT-X blocks (a second, image-only attention: ``attn2.to_q`` … into our ``attn2.qkv``) and qk
    RMSNorm: a peft LoRA on every linear layer of diffusers' transformer, read back by diffusers'
    ``load_lora_adapter`` and fused, against LoraLoaderModelOnly on our loader's model from the file."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    (tmp_path / "models" / "loras").mkdir()
    checkpoint, _ = write_sd35_medium_tiny(tmp_path / "models" / "checkpoints")
    model = diffusers_transformer(checkpoint, **SD35_DIFFUSERS)
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert "transformer_blocks.1.attn2.to_q" in layers
    model.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, target_modules=layers))
    randomize_lora([model], seed=13)
    lora = {f"transformer.{k}": v for k, v in get_peft_model_state_dict(model).items()}
    save_file(lora, str(tmp_path / "models" / "loras" / "sd35.safetensors"))
    untouched = reference_velocity(diffusers_transformer(checkpoint, **SD35_DIFFUSERS), *mmdit_inputs())
    want = diffusers_transformer(checkpoint, **SD35_DIFFUSERS)
    want.load_lora_adapter(lora, prefix="transformer")
    want.fuse_lora(lora_scale=-0.6)

    ctx = Context("1", environment(str(tmp_path / "models"), tmp_path))
    base = call(ctx, "CheckpointLoaderSimple", ckpt_name=checkpoint.name)[0]
    (ours_model,) = call(ctx, "LoraLoaderModelOnly", model=base, lora_name="sd35.safetensors", strength_model=-0.6)
    with torch.no_grad():
        got = ours_model.module(*mmdit_inputs())
    want = reference_velocity(want, *mmdit_inputs())
    assert rel_err(got, want) <= TOL and rel_err(untouched, want) > 100 * TOL


# ---- the base model is shared, never changed -------------------------------------------------------------------------

def test_strength_zero_is_the_untouched_model_and_the_cached_base_stays_bit_identical(env):
    shutil.copy(peft_lora_file(), Path(env.models_dir) / "loras" / "sd3_style.safetensors")
    assert_lora_leaves_the_base_untouched(env, CHECKPOINT, "sd3_style.safetensors", mmdit_inputs(),
                                          "EmptySD3LatentImage")


# ---- the demo LoRA, errors and warnings --------------------------------------------------------------------------

def test_demo_sd3_lora_is_in_diffusers_layout_and_diffusers_reads_it_as_we_do(env):
    from nodes.demo import make_demo_loras

    path = make_demo_loras(Path(env.models_dir) / "loras")["sd3_lora"]
    state = load_file(str(path))
    assert all(k.startswith(("transformer.transformer_blocks.", "text_encoder.text_model.",
                             "text_encoder_2.text_model.")) for k in state)
    assert any(".attn.add_k_proj." in k for k in state) and any(k.startswith("text_encoder_2.") for k in state)
    assert_matches(ours(env, path.name, 1.0, 1.0), reference(path, 1.0, 1.0), reference(None))


def test_an_sdxl_lora_on_sd3_is_an_error_naming_the_file_and_what_it_expected(env):
    from nodes.demo import make_demo_loras

    make_demo_loras(Path(env.models_dir) / "loras")
    ctx = Context("1", env)
    model, clip, _ = call(ctx, "CheckpointLoaderSimple", ckpt_name="demo_sd3_medium.safetensors")
    expected = (r"LoraLoaderModelOnly: lora_name: 'demo_lcm_lora_sdxl.safetensors' changes no weight of this SD3 "
                r"model.*lora_unet_down_blocks.*lora_unet_joint_blocks_0_x_block_attn_qkv.*"
                r"transformer_blocks\.0\.attn\.to_q")
    with pytest.raises(Exception, match=expected):
        call(ctx, "LoraLoaderModelOnly", model=model, lora_name="demo_lcm_lora_sdxl.safetensors", strength_model=1.0)


def test_t5_modules_are_counted_as_not_applied(env, caplog):
    """T5-XXL's LoRA modules (sd-scripts' lora_te3_) are not applied: counted in the warning by LoraLoader, passed
    over by the model-only loader, as text-encoder modules are."""
    path = kohya_file(Path(env.models_dir) / "loras" / "with_t5.safetensors", peft_lora_file(), on_original=True)
    state = load_file(str(path))
    state.update({f"lora_te3_encoder_block_{i}_layer_0_SelfAttention_q.{s}": torch.zeros(4, 4)
                  for i in range(2) for s in ("lora_down.weight", "lora_up.weight")})
    save_file(state, str(path))
    ctx = Context("1", env)
    model, clip, _ = call(ctx, "CheckpointLoaderSimple", ckpt_name=CHECKPOINT)
    with caplog.at_level(logging.WARNING, logger="latentgraph.lora"):
        call(ctx, "LoraLoader", model=model, clip=clip, lora_name=path.name, strength_model=1.0, strength_clip=1.0)
    assert "2 of the" in caplog.text and "lora_te3_encoder_block_0" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="latentgraph.lora"):
        call(ctx, "LoraLoaderModelOnly", model=model, lora_name=path.name, strength_model=1.0)
    assert "match no weight" not in caplog.text


# ---- through the entry point -----------------------------------------------------------------------------------------

def with_lora_loader(workflow: dict, lora_name: str) -> dict:
    """The UI workflow with a LoraLoader between its checkpoint loader and everything that takes the MODEL or CLIP."""
    w = copy.deepcopy(workflow)
    loader = next(n for n in w["nodes"] if n["type"] == "CheckpointLoaderSimple")
    node_id, link_id = w["last_node_id"] + 1, w["last_link_id"]
    outputs = []
    for slot, kind in enumerate(("MODEL", "CLIP")):
        moved = loader["outputs"][slot]["links"]
        for link in w["links"]:
            if link[0] in moved:
                link[1:3] = [node_id, slot]
        link_id += 1
        w["links"].append([link_id, loader["id"], slot, node_id, slot, kind])
        loader["outputs"][slot]["links"] = [link_id]
        outputs.append({"name": kind, "type": kind, "links": moved, "slot_index": slot})
    w["nodes"].append({"id": node_id, "type": "LoraLoader", "pos": [0, 420], "size": [320, 130], "flags": {},
                       "order": 1, "mode": 0, "outputs": outputs,
                       "inputs": [{"name": "model", "type": "MODEL", "link": link_id - 1},
                                  {"name": "clip", "type": "CLIP", "link": link_id}],
                       "properties": {"Node name for S&R": "LoraLoader"}, "widgets_values": [lora_name, 1.0, 1.0]})
    w["last_node_id"], w["last_link_id"] = node_id, link_id
    return w


def test_sd3_workflow_with_a_lora_loader_through_latentgraph_run(tmp_path_factory):
    env = environment(demo_models_dir(tmp_path_factory), tmp_path_factory.mktemp("sd3_lora_run"))
    plain = pixels(next(iter(run_workflow(workflow_path("sd3_txt2img"), env).values())))
    path = tmp_path_factory.mktemp("workflows") / "sd3_txt2img_lora.json"
    path.write_text(json.dumps(with_lora_loader(json.loads(Path(workflow_path("sd3_txt2img")).read_text()),
                                                "demo_sd3_lora.safetensors")))
    node = json.loads(path.read_text())["last_node_id"]
    with_lora = pixels(next(iter(run_workflow(str(path), env).values())))
    assert with_lora.shape == plain.shape == (256, 256, 3)
    assert np.abs(with_lora - plain).mean() > 1
    off = pixels(next(iter(run_workflow(str(path), env, f"{node}.strength_model=0",
                                        f"{node}.strength_clip=0").values())))
    assert np.array_equal(off, plain)
