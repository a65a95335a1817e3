"""LoRA loaders (nodes.library.lora) against diffusers' ``load_lora_weights`` + ``fuse_lora`` (peft), on the tiny demo
SDXL, SD 1.5 and SD 2.x models: LoRA files in each key layout people download, written here from diffusers' and
transformers' own module names (and, for kohya-ss's SDXL names, from diffusers' own original→diffusers converter);
UNet and text-encoder outputs; negative strengths; stacking; strength 0; the cached base model left bit-identical;
errors and warnings."""
import logging
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from nodes.node import Context, load_builtin_nodes
from server.models import ModelResidency
from sdxl_helpers import environment
from tests import pipeline_oracle as oracle
from tests.oracles import demo_models, rel_err

TOL = 1e-4
RANK, ALPHA = 4, 2.0
PROMPT = "a majestic lion jumping from a big stone at night"
CHECKPOINTS = {"sdxl": "demo_sdxl_base.safetensors", "sd1": "demo_sd15.safetensors",
               "sd2": "demo_sd2_768v.safetensors"}
FORMATS = ["kohya", "peft", "lora_down_up_alpha"]
UNET_LAYERS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2")
TEXT_LAYERS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
REGISTRY = load_builtin_nodes()


# ---- the oracle: diffusers pipelines on the demo's diffusers folders ----------------------------------------------

def reference_pipeline(family: str):
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    if family == "sdxl":
        return oracle.base_pipeline(demo_models()["sdxl_base_diffusers"], oracle.euler_karras())
    folder = demo_models()[f"{family}_diffusers"]
    tokenizer = oracle.hf_tokenizers()[0 if family == "sd1" else 1]  # SD 2.x pads with "!" (id 0), like open_clip
    return StableDiffusionPipeline(
        vae=oracle._strict(AutoencoderKL, folder / "vae"), unet=oracle._strict(UNet2DConditionModel, folder / "unet"),
        text_encoder=oracle._strict(CLIPTextModel, folder / "text_encoder"), tokenizer=tokenizer,
        scheduler=oracle.euler_karras(), safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def text_encoders(pipe) -> dict[str, nn.Module]:
    """{the name diffusers' LoRA files give it: the tower}."""
    towers = {"text_encoder": pipe.text_encoder, "text_encoder_2": getattr(pipe, "text_encoder_2", None)}
    return {name: tower for name, tower in towers.items() if tower is not None}


def unet_inputs(pipe, seed=1):
    g = torch.Generator().manual_seed(seed)
    x, t = torch.randn(2, 4, 16, 16, generator=g), torch.tensor([999.0, 37.5])
    context = torch.randn(2, 77, pipe.unet.config.cross_attention_dim, generator=g)
    if pipe.unet.config.addition_embed_type != "text_time":
        return (x, t, context), dict(encoder_hidden_states=context)
    from nodes.sdxl.embeddings import timestep_embedding
    pooled = torch.randn(2, pipe.text_encoder_2.config.projection_dim, generator=g)
    time_ids = torch.tensor([[1024.0, 768, 16, 32, 1024, 768]] * 2)
    y = torch.cat([pooled, timestep_embedding(time_ids.flatten(), 256).reshape(2, -1)], dim=1)
    return (x, t, context, y), dict(encoder_hidden_states=context,
                                    added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids})


def reference_outputs(pipe) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(UNet output, prompt embeddings, pooled embedding or None) of the pipeline as it stands."""
    (x, t, *_), kwargs = unet_inputs(pipe)
    with torch.no_grad():
        eps = pipe.unet(x, t, **kwargs).sample
        encoded = pipe.encode_prompt(prompt=PROMPT, device="cpu", num_images_per_prompt=1,
                                     do_classifier_free_guidance=False)
    return eps, encoded[0], encoded[2] if len(encoded) == 4 else None


def fuse(pipe, path, fmt: str, strength_model: float, strength_clip: float) -> None:
    """Load the LoRA file into the pipeline as diffusers does and fuse it at these strengths; the LoRA layers are
    unloaded afterwards, so another one can be fused on top (stacking)."""
    if fmt == "lora_down_up_alpha":  # diffusers reads alphas from kohya-ss files only: hand them over as its
        state = load_file(str(path))  # loaders' network_alphas
        alphas = {k: v.item() for k, v in state.items() if k.endswith(".alpha")}
        for prefix, target in {"unet": pipe.unet, **text_encoders(pipe)}.items():
            part = {k: v for k, v in state.items() if k.startswith(prefix + ".") and not k.endswith(".alpha")}
            mine = {k: v for k, v in alphas.items() if k.startswith(prefix + ".")}
            if prefix == "unet":
                pipe.load_lora_into_unet(part, mine, target, _pipeline=pipe)
            else:
                pipe.load_lora_into_text_encoder(part, mine, target, prefix=prefix, _pipeline=pipe)
    else:
        pipe.load_lora_weights(str(path))
    pipe.fuse_lora(components=["unet"], lora_scale=strength_model)
    pipe.fuse_lora(components=list(text_encoders(pipe)), lora_scale=strength_clip)
    pipe.unload_lora_weights()


# ---- LoRA files in each layout ------------------------------------------------------------------------------------

def sgm_names(unet_config) -> dict[str, str]:
    """diffusers UNet weight → its name in the SDXL single file (``input_blocks.4.1.…``), by diffusers' own
    converter: each original tensor is tagged with its index and found again after conversion."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    state = load_file(str(demo_models()["sdxl_base"]))
    keys = [k for k in state if k.startswith("model.diffusion_model.")]
    tagged = {k: torch.full(state[k].shape, float(i)) for i, k in enumerate(keys)}
    converted = convert_ldm_unet_checkpoint(tagged, dict(unet_config))
    return {k: keys[int(v.flatten()[0])][len("model.diffusion_model."):] for k, v in converted.items()}


def adapted(module: nn.Module, layers) -> dict[str, nn.Module]:
    return {n: m for n, m in module.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and n.endswith(layers)
            and (".attentions." in n or ".resnets." in n or ".layers." in n)}


def write_lora(path, pipe, family: str, fmt: str, seed: int, text: bool = True):
    """A random rank-4 LoRA on the UNet's attention and resnet layers and the text encoders' linear layers:
    ``kohya`` (kohya-ss names: the original UNet's on SDXL, diffusers' on SD 1.x, with alpha), ``peft``
    (diffusers/PEFT ``lora_A``/``lora_B``, no alpha) or ``lora_down_up_alpha`` (diffusers' older ``lora.down``/
    ``lora.up`` and ``lora_linear_layer`` names, with alpha). One alpha for every module: diffusers 0.42 builds
    peft's per-module ``alpha_pattern`` from attention-processor names its modules no longer have, so it would
    drop differing alphas."""
    g = torch.Generator().manual_seed(seed)
    sgm = sgm_names(pipe.unet.config) if (fmt, family) == ("kohya", "sdxl") else {}
    kohya_text = {"text_encoder": "lora_te1_" if family == "sdxl" else "lora_te_", "text_encoder_2": "lora_te2_"}
    modules = {}
    for n, m in adapted(pipe.unet, UNET_LAYERS).items():
        modules[{"kohya": "lora_unet_" + (sgm[n + ".weight"][:-len(".weight")] if sgm else n).replace(".", "_"),
                 "peft": f"unet.{n}", "lora_down_up_alpha": f"unet.{n}.lora"}[fmt]] = m
    for prefix, tower in text_encoders(pipe).items() if text else ():
        for n, m in adapted(tower, TEXT_LAYERS).items():
            hf = n if n.startswith("text_model.") else "text_model." + n  # transformers 5 flattens text_model
            modules[{"kohya": kohya_text[prefix] + hf.replace(".", "_"), "peft": f"{prefix}.{hf}",
                     "lora_down_up_alpha": f"{prefix}.{hf}.lora_linear_layer"}[fmt]] = m
    down_up = {"kohya": (".lora_down.weight", ".lora_up.weight"), "peft": (".lora_A.weight", ".lora_B.weight"),
               "lora_down_up_alpha": (".down.weight", ".up.weight")}[fmt]
    state = {}
    for name, m in modules.items():
        w = m.weight
        kernel = (1, 1) if w.ndim == 4 else ()
        state[name + down_up[0]] = torch.randn(RANK, *w.shape[1:], generator=g) / math.prod(w.shape[1:]) ** 0.5
        state[name + down_up[1]] = torch.randn(w.shape[0], RANK, *kernel, generator=g) * 0.3
        if fmt == "kohya":
            state[name + ".alpha"] = torch.tensor(ALPHA)
        elif fmt == "lora_down_up_alpha":
            state[name.removesuffix(".lora").removesuffix(".lora_linear_layer") + ".alpha"] = torch.tensor(ALPHA)
    save_file(state, str(path))
    return path


# ---- ours, through the nodes --------------------------------------------------------------------------------------

@pytest.fixture
def env(tmp_path):
    (tmp_path / "models" / "loras").mkdir(parents=True)
    (tmp_path / "models" / "checkpoints").symlink_to(demo_models()["sdxl_base"].parent, target_is_directory=True)
    return environment(str(tmp_path / "models"), tmp_path)


def call(ctx, kind, **values):
    return REGISTRY[kind].call(ctx, values).outputs


def our_outputs(ctx, family: str, loras=()) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The same three outputs from CheckpointLoaderSimple → LoraLoader × len(loras) → the patched UNet and
    CLIPTextEncode. ``loras``: (file name, strength_model, strength_clip)."""
    model, clip, _ = call(ctx, "CheckpointLoaderSimple", ckpt_name=CHECKPOINTS[family])
    for name, strength_model, strength_clip in loras:
        model, clip = call(ctx, "LoraLoader", model=model, clip=clip, lora_name=name, strength_model=strength_model,
                           strength_clip=strength_clip)
    (cond,) = call(ctx, "CLIPTextEncode", clip=clip, text=PROMPT)
    args, _ = unet_inputs(reference_pipeline(family))
    with torch.no_grad():
        eps = model.module(*args)
    return eps, cond[0][0], cond[0][1].get("pooled_output")


def assert_close(ours, want, unpatched=None):
    for got, ref, base, what in zip(ours, want, unpatched or (None,) * 3, ("UNet", "text", "pooled")):
        if ref is None:
            continue
        assert rel_err(got, ref) <= TOL, (what, rel_err(got, ref))
        if base is not None:  # the LoRA changes it far beyond the tolerance
            assert rel_err(base, ref) > 100 * TOL, what


# ---- parity -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("family", ["sdxl", "sd1", "sd2"])
def test_lora_matches_diffusers_load_lora_weights_and_fuse_lora(env, family, fmt):
    pipe = reference_pipeline(family)
    untouched = reference_outputs(pipe)
    write_lora(env.models_dir + "/loras/style.safetensors", pipe, family, fmt, seed=5)
    fuse(pipe, env.models_dir + "/loras/style.safetensors", fmt, 0.8, -0.6)
    ours = our_outputs(Context("1", env), family, [("style.safetensors", 0.8, -0.6)])
    assert_close(ours, reference_outputs(pipe), untouched)


@pytest.mark.parametrize("family", ["sdxl", "sd1"])
def test_stacked_loras_match_diffusers_fusing_one_after_the_other(env, family):
    pipe = reference_pipeline(family)
    stack = [("kohya", "a.safetensors", 0.5, 1.0), ("peft", "b.safetensors", -1.0, 0.7)]
    for fmt, name, strength_model, strength_clip in stack:
        write_lora(f"{env.models_dir}/loras/{name}", pipe, family, fmt, seed=len(name) + ord(name[0]))
        fuse(pipe, f"{env.models_dir}/loras/{name}", fmt, strength_model, strength_clip)
    ours = our_outputs(Context("1", env), family, [s[1:] for s in stack])
    assert_close(ours, reference_outputs(pipe))


# ---- the base model is shared, never changed ----------------------------------------------------------------------

def test_strength_zero_is_the_untouched_model_and_removing_a_lora_leaves_the_cached_base_bit_identical(env):
    pipe = reference_pipeline("sdxl")
    write_lora(env.models_dir + "/loras/style.safetensors", pipe, "sdxl", "kohya", seed=5)
    assert_lora_leaves_the_base_untouched(env, CHECKPOINTS["sdxl"], "style.safetensors", unet_inputs(pipe)[0],
                                          "EmptyLatentImage")


def assert_lora_leaves_the_base_untouched(env, ckpt_name: str, lora_name: str, args, empty_latent: str):
    """Strength 0 gives the loaders' inputs back as they are; a LoRA at strength 1, sampled with, is its own cached
    value sharing every tensor it leaves alone and counted by the memory budget, and the cached base model (network,
    text towers, outputs, conditioning) stays bit-identical. ``args``: what the MODEL's network is called with."""
    resources = ModelResidency("cpu", ram_budget=8 << 30)
    ctx = Context("1", env, resources=resources)
    model, clip, _ = call(ctx, "CheckpointLoaderSimple", ckpt_name=ckpt_name)
    base = {name: t.clone() for name, t in model.module.state_dict().items()}
    towers = [{name: t.clone() for name, t in tower.state_dict().items()} for tower in clip.towers()]
    with torch.no_grad():
        before = model.module(*args)
    (cond_before,) = call(ctx, "CLIPTextEncode", clip=clip, text=PROMPT)

    assert call(ctx, "LoraLoader", model=model, clip=clip, lora_name=lora_name, strength_model=0.0,
                strength_clip=0.0) == (model, clip)
    assert call(ctx, "LoraLoaderModelOnly", model=model, lora_name=lora_name, strength_model=0.0) == (model,)

    used = resources.stats()["ram_bytes"]
    patched, patched_clip = call(ctx, "LoraLoader", model=model, clip=clip, lora_name=lora_name,
                                 strength_model=1.0, strength_clip=1.0)
    (cond,) = call(ctx, "CLIPTextEncode", clip=patched_clip, text=PROMPT)
    (latent,) = call(ctx, empty_latent, width=64, height=64, batch_size=1)
    call(ctx, "KSampler", model=patched, seed=1, steps=1, cfg=5.0, sampler_name="euler", scheduler="normal",
         positive=cond, negative=cond, latent_image=latent, denoise=1.0)
    # the patched network is its own cached value: only the weights the LoRA changes are new, and they are counted
    ours, theirs = model.module, patched.module
    assert patched.module is theirs and theirs is not ours
    shared = [n for n, t in theirs.state_dict().items() if t.data_ptr() == ours.state_dict()[n].data_ptr()]
    changed = {n: t for n, t in theirs.state_dict().items() if n not in shared}
    assert changed and len(shared) > len(changed)
    grown = sum(t.numel() * t.element_size() for t in changed.values())
    assert resources.stats()["ram_bytes"] - used >= grown
    # the base, as cached for every other graph: bit-identical weights, outputs and conditioning
    again, clip_again, _ = call(ctx, "CheckpointLoaderSimple", ckpt_name=ckpt_name)
    assert again.module is ours
    assert all(torch.equal(t, base[n]) for n, t in ours.state_dict().items())
    assert all(torch.equal(t, saved[n]) for tower, saved in zip(clip_again.towers(), towers)
               for n, t in tower.state_dict().items())
    with torch.no_grad():
        assert torch.equal(again.module(*args), before)
    (cond_after,) = call(ctx, "CLIPTextEncode", clip=clip_again, text=PROMPT)
    assert torch.equal(cond_after[0][0], cond_before[0][0]) and not torch.equal(cond[0][0], cond_before[0][0])


# ---- files that do not fit ----------------------------------------------------------------------------------------

def test_a_lora_for_nothing_in_the_model_is_an_error_naming_the_file_and_what_it_expected(env):
    ctx = Context("1", env)
    save_file({"transformer.blocks.0.attn.qkv.lora_A.weight": torch.zeros(4, 8),
               "transformer.blocks.0.attn.qkv.lora_B.weight": torch.zeros(8, 4)},
              env.models_dir + "/loras/flux_style.safetensors")
    model, clip, _ = call(ctx, "CheckpointLoaderSimple", ckpt_name=CHECKPOINTS["sdxl"])
    with pytest.raises(Exception, match=r"LoraLoader: lora_name: 'flux_style.safetensors' changes no weight of this "
                                        r"SDXL.*transformer\.blocks\.0\.attn\.qkv.*lora_unet_.*attn1_to_q"):
        call(ctx, "LoraLoader", model=model, clip=clip, lora_name="flux_style.safetensors", strength_model=1.0,
             strength_clip=1.0)


def test_an_sd15_lora_on_sdxl_is_refused_by_its_shapes(env):
    ctx = Context("1", env)
    write_lora(env.models_dir + "/loras/sd15.safetensors", reference_pipeline("sd1"), "sd1", "peft", seed=3)
    model, clip, _ = call(ctx, "CheckpointLoaderSimple", ckpt_name=CHECKPOINTS["sdxl"])
    with pytest.raises(Exception, match="'sd15.safetensors' changes .* the LoRA is for another model"):
        call(ctx, "LoraLoader", model=model, clip=clip, lora_name="sd15.safetensors", strength_model=1.0,
             strength_clip=1.0)


def test_unmatched_modules_are_counted_in_a_warning(env, caplog):
    ctx = Context("1", env)
    path = write_lora(env.models_dir + "/loras/extra.safetensors", reference_pipeline("sd1"), "sd1", "kohya", seed=3)
    state = load_file(str(path))
    state.update({f"lora_unet_controlnet_{i}.{s}": torch.zeros(4, 4) for i in range(3)
                  for s in ("lora_down.weight", "lora_up.weight")})
    save_file(state, str(path))
    model, clip, _ = call(ctx, "CheckpointLoaderSimple", ckpt_name=CHECKPOINTS["sd1"])
    with caplog.at_level(logging.WARNING, logger="latentgraph.lora"):
        call(ctx, "LoraLoader", model=model, clip=clip, lora_name="extra.safetensors", strength_model=1.0,
             strength_clip=1.0)
    assert "3 of the" in caplog.text and "lora_unet_controlnet_0" in caplog.text
    # the model-only loader leaves the text encoders' modules out without counting them as unmatched
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="latentgraph.lora"):
        call(ctx, "LoraLoaderModelOnly", model=model, lora_name="extra.safetensors", strength_model=1.0)
    assert "3 of the" in caplog.text


# ---- the demo LoRAs -----------------------------------------------------------------------------------------------

def test_make_demo_model_writes_the_demo_loras_beside_the_checkpoints(tmp_path, monkeypatch, capsys):
    import nodes.demo
    from server.cli import main

    monkeypatch.setattr(nodes.demo, "make_demo_models", lambda folder: {})  # the checkpoints have their own tests
    assert main(["make-demo-model", str(tmp_path / "models" / "checkpoints")]) == 0
    names = ["demo_sd15_lora.safetensors", "demo_sdxl_lora.safetensors", "demo_lcm_lora_sdxl.safetensors",
             "demo_sd3_lora.safetensors"]
    assert sorted(p.name for p in (tmp_path / "models" / "loras").iterdir()) == sorted(names)
    assert main(["make-demo-model", str(tmp_path / "c"), "--loras", str(tmp_path / "l")]) == 0
    assert sorted(p.name for p in (tmp_path / "l").iterdir()) == sorted(names)
    with safe_open(str(tmp_path / "l" / names[0]), "pt") as f:
        notice = f.metadata()["latentgraph_demo"]
    assert "produce noise" in notice and "<models>/loras" in notice


@pytest.mark.parametrize("family, name, fmt, keys", [
    ("sdxl", "sdxl_lora", "kohya", ("lora_unet_input_blocks_", "lora_unet_output_blocks_", "lora_te1_text_model_",
                                    "lora_te2_text_model_")),
    ("sdxl", "sdxl_lcm_lora", "kohya", ("lora_unet_down_blocks_", "lora_unet_up_blocks_")),
    ("sd1", "sd15_lora", "peft", ("unet.down_blocks.", "unet.up_blocks.", "text_encoder.text_model."))])
def test_demo_loras_are_in_real_layouts_that_diffusers_reads_as_we_do(env, family, name, fmt, keys):
    from nodes.demo import make_demo_loras

    path = make_demo_loras(env.models_dir + "/loras")[name]
    state = load_file(str(path))
    assert all(any(k.startswith(prefix) for k in state) for prefix in keys)
    assert all(k.startswith(("lora_unet_", "lora_te") if fmt == "kohya" else ("unet.", "text_encoder.")) for k in state)
    assert ("lcm" in name) == (not any("text_model" in k for k in state))  # LCM-LoRA adapts the UNet alone
    pipe = reference_pipeline(family)
    untouched = reference_outputs(pipe)
    fuse(pipe, path, fmt, 1.0, 1.0)
    ours = our_outputs(Context("1", env), family, [(path.name, 1.0, 1.0)])
    assert_close(ours, reference_outputs(pipe), untouched if "lcm" not in name else untouched[:1])


# ---- LyCORIS ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, layer", [("loha", nn.Linear(64, 96)), ("loha", nn.Conv2d(32, 48, 3)),
                                         ("lokr", nn.Linear(64, 96))])
def test_lycoris_changes_match_peft(tmp_path, kind, layer):
    """LoHa (Hadamard product of two low-rank factors) and LoKr (Kronecker product, its second factor low-rank): the
    change our reader computes from a file in LyCORIS's names equals peft's ``get_delta_weight`` of the same tensors
    (alpha / rank scaling as in both)."""
    from peft import LoHaConfig, LoKrConfig, inject_adapter_in_model

    from nodes.lora import read_lora

    config = (LoHaConfig if kind == "loha" else LoKrConfig)(r=RANK, alpha=ALPHA, target_modules=["layer"],
                                                             init_weights=False)
    holder = inject_adapter_in_model(config, nn.ModuleDict({"layer": layer}))
    g = torch.Generator().manual_seed(4)
    state = {"lora_unet_layer.alpha": torch.tensor(ALPHA)}
    with torch.no_grad():
        for name, p in holder.named_parameters():
            if name.endswith(".default"):
                p.copy_(torch.randn(p.shape, generator=g))
                state["lora_unet_layer." + name.split(".")[1]] = p.detach().clone()
    save_file(state, str(tmp_path / "lycoris.safetensors"))
    adapter = read_lora(tmp_path / "lycoris.safetensors")["lora_unet_layer"]
    want = holder["layer"].get_delta_weight("default")
    assert adapter.kind == kind and adapter.numel() == want.numel()
    assert rel_err(adapter.delta(tuple(want.shape), "cpu"), want) <= 1e-6
