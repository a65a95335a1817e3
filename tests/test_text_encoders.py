"""Text encoders loaded through our loader from safetensors files in both layouts, checked against
independent references: transformers' CLIPTextModel (CLIP-L), open_clip's CLIP text tower and HF's
CLIPTextModelWithProjection (bigG). Plus weighting, long prompts, errors and the full-size key layout."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from nodes.sdxl.configs import TINY_BIGG_WIDTH, TINY_CLIP_L_WIDTH
from nodes.sdxl.text import TINY_TEXT_HEADS, build_text_encoders, full_size_state_shapes
from nodes.sdxl.tokenizer import PAD_BIGG, PAD_CLIP_L, shared_tokenizer

KEYS_DIR = Path(__file__).parents[1].parent / "shared" / "reference" / "keys"
TOL = 1e-4
SHORT = "a photo of a cat sitting on a red mat"
LONG = ", ".join(["a lighthouse on a rocky coast in a violent storm with crashing waves"] * 9)

BASE_PREFIXES = {"conditioner.embedders.0.transformer.": "clip_l.", "conditioner.embedders.1.model.": "clip_g."}
REFINER_PREFIXES = {"conditioner.embedders.0.model.": "clip_g."}


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Norm weights and biases start at 1/0; redraw them so every parameter matters to the comparison."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def hf_config(act: str):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(hidden_size=TINY_CLIP_L_WIDTH, intermediate_size=4 * TINY_CLIP_L_WIDTH,
                          num_attention_heads=TINY_TEXT_HEADS, num_hidden_layers=3, vocab_size=49408,
                          max_position_embeddings=77, hidden_act=act, projection_dim=TINY_BIGG_WIDTH)


@pytest.fixture(scope="module")
def refs():
    """Independent tiny towers: HF CLIP-L, open_clip bigG, HF bigG (with projection)."""
    import open_clip
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    clip_l = randomize(CLIPTextModel(hf_config("quick_gelu")), 1)
    oc = open_clip.model.CLIP(embed_dim=TINY_BIGG_WIDTH,
                              vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=16, head_width=16),
                              text_cfg=dict(context_length=77, vocab_size=49408, width=TINY_BIGG_WIDTH,
                                            heads=TINY_TEXT_HEADS, layers=3))
    del oc.visual
    oc = randomize(oc, 2)
    hf_g = randomize(CLIPTextModelWithProjection(hf_config("gelu")), 3)
    return {"clip_l": clip_l, "open_clip": oc, "hf_g": hf_g}


def load_original(path: Path, prefixes: dict[str, str]) -> dict[str, torch.Tensor]:
    """What the checkpoint loader hands us: single-file prefixes replaced by clip_l. / clip_g."""
    sd = load_file(path)
    return {next(new + k[len(old):] for old, new in prefixes.items() if k.startswith(old)): v
            for k, v in sd.items()}


@pytest.fixture(scope="module")
def files(refs, tmp_path_factory):
    """Tiny text encoders written to disk in the single-file layout and in the diffusers folder layout."""
    d = tmp_path_factory.mktemp("text")
    l_sd = {f"text_model.{k}": v for k, v in refs["clip_l"].state_dict().items()}
    l_sd["text_model.embeddings.position_ids"] = torch.arange(77)[None]  # real checkpoints carry it
    g_sd = refs["open_clip"].state_dict()
    save_file({**{f"conditioner.embedders.0.transformer.{k}": v for k, v in l_sd.items()},
               **{f"conditioner.embedders.1.model.{k}": v for k, v in g_sd.items()}}, d / "base.safetensors")
    save_file({f"conditioner.embedders.0.model.{k}": v for k, v in g_sd.items()}, d / "refiner.safetensors")
    refs["clip_l"].save_pretrained(d / "diffusers" / "text_encoder")
    refs["hf_g"].save_pretrained(d / "diffusers" / "text_encoder_2")
    return d


def diffusers_sd(folder: Path, towers=("text_encoder", "text_encoder_2")) -> dict[str, torch.Tensor]:
    return {f"{t}.{k}": v for t in towers for k, v in load_file(folder / t / "model.safetensors").items()}


@pytest.fixture(scope="module")
def base_original(files):
    return build_text_encoders("sdxl_base", load_original(files / "base.safetensors", BASE_PREFIXES), "original")


@pytest.fixture(scope="module")
def base_diffusers(files):
    return build_text_encoders("sdxl_base", diffusers_sd(files / "diffusers"), "diffusers")


def windows_ids(text: str, pad: int) -> torch.Tensor:
    return torch.tensor([[i for i, _ in w] for w in shared_tokenizer().tokenize_weighted(text, pad)])


@torch.no_grad()
def ref_clip_l(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, output_hidden_states=True).hidden_states[-2].reshape(1, -1, TINY_CLIP_L_WIDTH)


@torch.no_grad()
def ref_open_clip(model, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """open_clip's own text path; the penultimate state is the input of its last resblock."""
    seen = []
    hook = model.transformer.resblocks[-1].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    pooled = model.encode_text(ids)
    hook.remove()
    return seen[0].reshape(1, -1, TINY_BIGG_WIDTH), pooled[:1]


@torch.no_grad()
def ref_hf_g(model, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(input_ids=ids, output_hidden_states=True)
    return out.hidden_states[-2].reshape(1, -1, TINY_BIGG_WIDTH), out.text_embeds[:1]


@pytest.mark.parametrize("layout", ["original", "diffusers"])
@pytest.mark.parametrize("text", [SHORT, LONG])
def test_clip_l_matches_transformers(refs, base_original, base_diffusers, layout, text):
    enc = base_original if layout == "original" else base_diffusers
    ours = enc.encode_clip_l(text)
    ref = ref_clip_l(refs["clip_l"], windows_ids(text, PAD_CLIP_L))
    assert ours.shape == ref.shape == (1, 77 * (2 if text is LONG else 1), TINY_CLIP_L_WIDTH)
    assert rel_err(ours, ref) <= TOL


@pytest.mark.parametrize("text", [SHORT, LONG])
def test_bigg_matches_open_clip(refs, base_original, text):
    from open_clip.tokenizer import SimpleTokenizer

    ids = windows_ids(text, PAD_BIGG)
    if text is SHORT:  # ids straight from open_clip's tokenizer where it can (it truncates long prompts)
        ids = SimpleTokenizer()([text])
    hidden, pooled = base_original.encode_bigg(text)
    ref_hidden, ref_pooled = ref_open_clip(refs["open_clip"], ids)
    assert hidden.shape == ref_hidden.shape and pooled.shape == ref_pooled.shape == (1, TINY_BIGG_WIDTH)
    assert rel_err(hidden, ref_hidden) <= TOL
    assert rel_err(pooled, ref_pooled) <= TOL


@pytest.mark.parametrize("text", [SHORT, LONG])
def test_bigg_matches_hf_with_projection(refs, base_diffusers, text):
    hidden, pooled = base_diffusers.encode_bigg(text)
    ref_hidden, ref_pooled = ref_hf_g(refs["hf_g"], windows_ids(text, PAD_BIGG))
    assert rel_err(hidden, ref_hidden) <= TOL
    assert rel_err(pooled, ref_pooled) <= TOL


def test_clip_l_hub_style_keys_with_text_model_prefix(refs, files):
    """Hub text_encoder files (saved by transformers 4) keep `text_model.` and `position_ids`."""
    sd = {f"text_encoder.text_model.{k}": v for k, v in refs["clip_l"].state_dict().items()}
    sd["text_encoder.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    sd.update(diffusers_sd(files / "diffusers", ("text_encoder_2",)))
    enc = build_text_encoders("sdxl_base", sd, "diffusers")
    assert rel_err(enc.encode_clip_l(SHORT), ref_clip_l(refs["clip_l"], windows_ids(SHORT, PAD_CLIP_L))) <= TOL


def test_weighting_against_the_empty_prompt(refs, base_original):
    """`(cat:1.5)` moves only the cat token: z = (z − z_empty)·1.5 + z_empty; the pooled vector is untouched."""
    plain, weighted = "a photo of a cat", "a photo of a (cat:1.5)"
    z = ref_clip_l(refs["clip_l"], windows_ids(plain, PAD_CLIP_L))
    z_empty = ref_clip_l(refs["clip_l"], windows_ids("", PAD_CLIP_L))
    expected = z.clone()
    expected[:, 5] = (z[:, 5] - z_empty[:, 5]) * 1.5 + z_empty[:, 5]  # SOT a photo of a [cat]
    ours = base_original.encode_clip_l(weighted)
    assert rel_err(ours, expected) <= TOL
    assert (ours[:, 5] - z[:, 5]).abs().max() > 1e-2  # the weight did something
    torch.testing.assert_close(ours[:, :5], base_original.encode_clip_l(plain)[:, :5], rtol=0, atol=0)

    g_hidden, g_pooled = base_original.encode_bigg(weighted)
    g_plain, g_plain_pooled = base_original.encode_bigg(plain)
    assert torch.equal(g_pooled, g_plain_pooled)
    assert (g_hidden[:, 5] - g_plain[:, 5]).abs().max() > 1e-2


def test_encode_pads_the_shorter_prompt_with_empty_windows(base_original):
    context, pooled = base_original.encode(SHORT, LONG)
    assert context.shape == (1, 154, TINY_CLIP_L_WIDTH + TINY_BIGG_WIDTH)
    g_hidden, g_pooled = base_original.encode_bigg(LONG)
    assert torch.equal(context[..., TINY_CLIP_L_WIDTH:], g_hidden) and torch.equal(pooled, g_pooled)
    assert torch.equal(context[:, :77, :TINY_CLIP_L_WIDTH], base_original.encode_clip_l(SHORT))
    assert torch.equal(context[:, 77:, :TINY_CLIP_L_WIDTH], base_original.encode_clip_l(""))


@pytest.mark.parametrize("layout", ["original", "diffusers"])
def test_refiner_has_bigg_only(refs, files, layout):
    if layout == "original":
        sd, ref = load_original(files / "refiner.safetensors", REFINER_PREFIXES), ref_open_clip
        model = refs["open_clip"]
    else:
        sd, ref, model = diffusers_sd(files / "diffusers", ("text_encoder_2",)), ref_hf_g, refs["hf_g"]
    enc = build_text_encoders("sdxl_refiner", sd, layout)
    assert enc.has_bigg and not enc.has_clip_l
    context, pooled = enc.encode_refiner(SHORT)
    ref_hidden, ref_pooled = ref(model, windows_ids(SHORT, PAD_BIGG))
    assert context.shape == (1, 77, TINY_BIGG_WIDTH)
    assert rel_err(context, ref_hidden) <= TOL and rel_err(pooled, ref_pooled) <= TOL
    with pytest.raises(ValueError, match="CLIP-L"):
        enc.encode(SHORT, SHORT)


def test_bf16_weights_load_in_target_dtype(refs, files):
    sd = load_original(files / "base.safetensors", BASE_PREFIXES)
    enc = build_text_encoders("sdxl_base", sd, "original", dtype=torch.bfloat16)
    assert enc.dtype == torch.bfloat16 and enc.clip_l.dtype == torch.bfloat16
    hidden, pooled = enc.encode_bigg(SHORT)
    assert hidden.dtype == torch.float32
    ref_hidden, _ = ref_open_clip(refs["open_clip"], windows_ids(SHORT, PAD_BIGG))
    assert rel_err(hidden, ref_hidden) < 5e-2


def test_loader_fails_loudly(files):
    sd = load_original(files / "base.safetensors", BASE_PREFIXES)
    missing = {k: v for k, v in sd.items() if k != "clip_g.transformer.resblocks.1.mlp.c_fc.bias"}
    with pytest.raises(KeyError, match="resblocks.1.mlp.c_fc.bias"):
        build_text_encoders("sdxl_base", missing, "original")
    with pytest.raises(KeyError, match="CLIP-L text encoder: unexpected 1: .*surprise"):
        build_text_encoders("sdxl_base", {**sd, "clip_l.text_model.surprise": torch.zeros(1)}, "original")
    with pytest.raises(KeyError, match="no text encoder of this model"):
        build_text_encoders("sdxl_refiner", sd, "original")  # a refiner has no CLIP-L
    with pytest.raises(KeyError, match="clip_l"):
        build_text_encoders("sdxl_base", {k: v for k, v in sd.items() if k.startswith("clip_g.")}, "original")
    with pytest.raises(ValueError, match="layout"):
        build_text_encoders("sdxl_base", sd, "ckpt")
    with pytest.raises(ValueError, match="kind"):
        build_text_encoders("sd15", sd, "original")


def read_keys(name: str) -> dict[str, tuple[int, ...]]:
    out = {}
    for line in (KEYS_DIR / name).read_text().splitlines():
        key, shape = line.split("\t")
        if key.startswith("conditioner."):
            out[key] = tuple(json.loads(shape))
    return out


@pytest.mark.skipif(not KEYS_DIR.is_dir(), reason="shared/reference/keys not present")
@pytest.mark.parametrize("kind, name, count", [("sdxl_base", "sd_xl_base_1.0.txt", 197 + 390),
                                               ("sdxl_refiner", "sd_xl_refiner_1.0.txt", 390)])
def test_full_size_keys_and_shapes_match_the_real_checkpoints(kind, name, count):
    ref = read_keys(name)
    ours = full_size_state_shapes(kind)
    assert len(ref) == count
    assert sorted(set(ref) - set(ours)) == [] and sorted(set(ours) - set(ref)) == []
    assert {k: v for k, v in ours.items() if v != ref[k]} == {}
