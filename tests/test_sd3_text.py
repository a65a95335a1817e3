"""SD3's text side (nodes.mmdit): the T5 tokenizer against transformers' on the same vocabulary; T5-XXL, CLIP-L and
CLIP-G loaded through our loaders from files and checked against transformers' T5EncoderModel, CLIPTextModel and
CLIPTextModelWithProjection, assembled by hand into ComfyUI's SD3 context and pooled vector; the full-size layout on
the meta device."""
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from nodes.mmdit import t5 as t5_text
from nodes.mmdit.text_weights import (TEXT_FOLDERS, TEXT_PREFIXES, checkpoint_text, demo_text_tensors, folder_text,
                                      sd3_text_encoders, standalone_text, text_state_shapes)
from nodes.sdxl.tokenizer import PAD_BIGG, PAD_CLIP_L, shared_tokenizer
from nodes.weights import read_shapes

SHARED = Path(__file__).parents[1].parent / "shared" / "reference"
T5_VOCAB = SHARED / "tokenizers" / "t5-v1_1" / "tokenizer.json"
INCL_CLIPS = SHARED / "keys" / "sd3_medium_incl_clips_t5xxlfp8.txt"
TOL = 1e-4
L_WIDTH, G_WIDTH, T5_WIDTH = 32, 64, 128  # L ‖ G (96) is zero-padded to T5's width
PROMPT = "a photo of a cat sitting on a red mat"
LONG_T5 = " ".join(["a lighthouse on a rocky coast in a violent storm with crashing waves"] * 8)  # > 77 T5 tokens


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


# ---- the tokenizer -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_tokenizers():
    from transformers import T5Tokenizer, T5TokenizerFast

    return [T5TokenizerFast(tokenizer_file=str(T5_VOCAB)), T5Tokenizer(tokenizer_file=str(T5_VOCAB))]


@pytest.mark.parametrize("text", [
    PROMPT, "", "Hello, World!", "  leading and   inner  spaces ", "tabs\tand\nnew lines", "émigré naïve café",
    "東京タワー 🙂 ☕", "1234567 3.14 1e-4 #hashtag @user", "ALL CAPS, MiXeD cAsE", "don't won't it's",
    LONG_T5])
def test_t5_tokens_equal_transformers(hf_tokenizers, text):
    """Ids from the vendored vocabulary equal transformers' from the reference copy: the prompt's pieces and
    ``</s>`` (no start token), padded with ``<pad>`` to 77 and never truncated."""
    ours = t5_text.tokenize_weighted(text)
    for tokenizer in hf_tokenizers:
        ref = tokenizer(text).input_ids
        assert ref[-1] == t5_text.EOS
        assert [i for i, _ in ours] == ref + [t5_text.PAD] * (77 - len(ref)), type(tokenizer).__name__
    assert {w for _, w in ours} == {1.0}


def test_t5_prompt_weights_keep_the_pieces(hf_tokenizers):
    ours = t5_text.tokenize_weighted("a (red:1.5) cat")
    assert [i for i, _ in ours][:5] == hf_tokenizers[0]("a red cat").input_ids
    assert [w for _, w in ours][:5] == [1.0, 1.0, 1.5, 1.0, 1.0]  # "▁", "a", "▁red", "▁cat", "</s>"


# ---- tiny independent towers, written to files -----------------------------------------------------------------

def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Redraw every parameter, norm weights around 1, so each matters to the comparison."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g) if p.ndim == 1 else
                    torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def refs():
    """transformers' CLIP-L, CLIP-G (with projection, 32 layers like the real one, which is how a standalone file
    is told apart) and T5 encoder, T5's weights rounded through float8 as SD3 files store them."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    def clip_config(width, layers, act):
        return CLIPTextConfig(hidden_size=width, intermediate_size=4 * width, num_attention_heads=width // 8 if
                              width == 32 else width // 64, num_hidden_layers=layers, vocab_size=49408,
                              max_position_embeddings=77, hidden_act=act, projection_dim=width)

    t5 = randomize(T5EncoderModel(T5Config(
        vocab_size=32128, d_model=T5_WIDTH, d_kv=16, d_ff=96, num_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
        dropout_rate=0.0, is_encoder_decoder=False, use_cache=False)), 3)
    with torch.no_grad():
        for p in t5.parameters():
            p.copy_(p.to(torch.float8_e4m3fn).float())
    return {"clip_l": randomize(CLIPTextModel(clip_config(L_WIDTH, 3, "quick_gelu")), 1),
            "clip_g": randomize(CLIPTextModelWithProjection(clip_config(G_WIDTH, 32, "gelu")), 2), "t5xxl": t5}


def file_states(refs) -> dict[str, dict[str, torch.Tensor]]:
    """Each tower's tensors as SD3's files name them (transformers' names; T5 in float8, its embedding twice)."""
    clip_l = {k if k.startswith("text_model.") else f"text_model.{k}": v
              for k, v in refs["clip_l"].state_dict().items()}
    return {"clip_l": clip_l, "clip_g": dict(refs["clip_g"].state_dict()),
            "t5xxl": {k: v.to(torch.float8_e4m3fn) for k, v in refs["t5xxl"].state_dict().items()}}


@pytest.fixture(scope="module")
def files(refs, tmp_path_factory):
    """The towers as standalone files, as an incl_clips checkpoint's text_encoders.* (with and without T5) and as a
    diffusers folder's text_encoder/, _2/, _3/."""
    d = tmp_path_factory.mktemp("sd3_text")
    states = file_states(refs)
    out = {}
    for tower, sd in states.items():
        out[tower] = d / f"{tower}.safetensors"
        save_file({k: v.contiguous().clone() for k, v in sd.items()}, out[tower])
    checkpoint = {TEXT_PREFIXES[t] + k: v.contiguous().clone() for t, sd in states.items() for k, v in sd.items()}
    out["checkpoint"] = d / "incl_clips.safetensors"
    save_file(checkpoint, out["checkpoint"])
    out["checkpoint_no_t5"] = d / "incl_clips_no_t5.safetensors"
    save_file({k: v for k, v in checkpoint.items() if "t5xxl" not in k}, out["checkpoint_no_t5"])
    out["folder"] = d / "diffusers"
    for tower, sub in TEXT_FOLDERS.items():
        (out["folder"] / sub).mkdir(parents=True)
        save_file({k: v.contiguous().clone() for k, v in states[tower].items()},
                  out["folder"] / sub / "model.safetensors")
    return out


def load(files, source: str, context_width: int = T5_WIDTH):
    if source == "standalone":
        return standalone_text([files["t5xxl"], files["clip_g"], files["clip_l"]], torch.float32, "cpu")
    if source == "folder":
        return folder_text(files["folder"], torch.float32, "cpu", context_width)
    path = files[source]
    return checkpoint_text(path, read_shapes(path), torch.float32, "cpu", context_width)


def t5_ids(text: str) -> torch.Tensor:
    from transformers import T5TokenizerFast

    ids = T5TokenizerFast(tokenizer_file=str(T5_VOCAB))(text).input_ids
    return torch.tensor([ids + [0] * (77 - len(ids))])


def clip_ids(text: str, pad: int) -> torch.Tensor:
    """[windows, 77]: a long prompt is several 77-token windows (the CLIP tokenizer has its own tests)."""
    return torch.tensor([[i for i, _ in window] for window in shared_tokenizer().tokenize_weighted(text, pad)])


@torch.no_grad()
def reference(refs, text: str, with_t5: bool = True, width: int = T5_WIDTH, layer: int = -2
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """ComfyUI's SD3 conditioning from transformers' towers: [CLIP-L ‖ CLIP-G states at ``layer``, zero-padded to
    ``width``, windows one after another; then T5's final states] on the token axis, and CLIP-L's pooled ‖
    CLIP-G's projected pooled of the first window."""
    l_out = refs["clip_l"](clip_ids(text, PAD_CLIP_L), output_hidden_states=True)
    g_out = refs["clip_g"](clip_ids(text, PAD_BIGG), output_hidden_states=True)
    lg = torch.cat([l_out.hidden_states[layer], g_out.hidden_states[layer]], dim=-1).flatten(0, 1)[None]
    parts = [F.pad(lg, (0, width - lg.shape[-1]))]
    if with_t5:
        parts.append(refs["t5xxl"](input_ids=t5_ids(text)).last_hidden_state)  # no attention mask: pads attended
    return torch.cat(parts, dim=1), torch.cat([l_out.pooler_output[:1], g_out.text_embeds[:1]], dim=-1)


# ---- parity ------------------------------------------------------------------------------------------------------

def test_clip_pads_are_the_end_token_for_clip_l_and_zero_for_clip_g():
    assert clip_ids("a cat", PAD_CLIP_L)[0, -1] == 49407 and clip_ids("a cat", PAD_BIGG)[0, -1] == 0


@pytest.mark.parametrize("source, text", [("standalone", PROMPT), ("checkpoint", PROMPT), ("folder", PROMPT),
                                          ("checkpoint", LONG_T5)])
def test_sd3_conditioning_matches_transformers(refs, files, source, text):
    """Each part of the context and of the pooled vector against the tower that makes it; the long prompt has two
    CLIP windows and more than 77 T5 tokens."""
    ((context, extras),) = load(files, source).conditioning(text)
    ref_context, ref_pooled = reference(refs, text)
    clip = 77 * len(clip_ids(text, PAD_CLIP_L))
    assert context.shape == ref_context.shape == (1, clip + max(77, t5_ids(text).shape[1]), T5_WIDTH)
    n = L_WIDTH + G_WIDTH
    assert rel_err(context[:, :clip, :L_WIDTH], ref_context[:, :clip, :L_WIDTH]) <= TOL, "CLIP-L penultimate"
    assert rel_err(context[:, :clip, L_WIDTH:n], ref_context[:, :clip, L_WIDTH:n]) <= TOL, "CLIP-G penultimate"
    assert not context[:, :clip, n:].any(), "zero padding to the context width"
    assert rel_err(context[:, clip:], ref_context[:, clip:]) <= TOL, "T5"
    pooled = extras["pooled_output"]
    assert rel_err(pooled[:, :L_WIDTH], ref_pooled[:, :L_WIDTH]) <= TOL, "CLIP-L pooled, unprojected"
    assert rel_err(pooled[:, L_WIDTH:], ref_pooled[:, L_WIDTH:]) <= TOL, "CLIP-G pooled, projected"


def test_clip_set_last_layer_moves_both_clip_towers_not_t5(refs, files):
    """CLIPSetLastLayer −1: CLIP-L's and CLIP-G's last hidden states (still without the final norm); T5 and the
    pooled vector as before."""
    ((context, extras),) = load(files, "checkpoint").with_layer(-1).conditioning(PROMPT)
    ref_context, ref_pooled = reference(refs, PROMPT, layer=-1)
    assert rel_err(context, ref_context) <= TOL and rel_err(extras["pooled_output"], ref_pooled) <= TOL
    assert rel_err(context[:, :77], reference(refs, PROMPT)[0][:, :77]) > 0.1


def test_t5_alone_matches_t5_encoder_model_on_a_long_prompt(refs, files):
    """A T5-only CLIP (CLIPLoader with the T5 file): T5's tokens alone, all of them (here > 77), no mask."""
    ((context, _),) = standalone_text([files["t5xxl"]], torch.float32, "cpu").conditioning(LONG_T5)
    ids = t5_ids(LONG_T5)
    assert ids.shape[1] > 77 and context.shape == (1, ids.shape[1], T5_WIDTH)
    with torch.no_grad():
        assert rel_err(context, refs["t5xxl"](input_ids=ids).last_hidden_state) <= TOL


def test_scaled_fp8_t5_matches_t5_encoder_model_on_the_scaled_weights(refs, tmp_path):
    """ComfyUI's scaled-fp8 T5 (t5xxl_fp8_e4m3fn_scaled): each float8 matrix times its per-tensor ``scale_weight``;
    the ``scaled_fp8`` marker and ``scale_input`` tensors are no weights. transformers gets the dequantized weights."""
    from transformers import T5EncoderModel

    state, dequantized = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}, {}
    for key, value in refs["t5xxl"].state_dict().items():
        if ".block." in key and key.endswith("weight") and value.ndim == 2 and "relative" not in key:
            scale = value.abs().max() / 448  # float8_e4m3fn's largest value
            layer = key.removesuffix("weight")
            state[key] = (value / scale).to(torch.float8_e4m3fn)
            state[layer + "scale_weight"], state[layer + "scale_input"] = scale, torch.tensor(1.0)
            dequantized[key] = state[key].float() * scale
        else:
            state[key] = dequantized[key] = value.clone()
    save_file(state, tmp_path / "t5xxl_fp8_e4m3fn_scaled.safetensors")
    ref = T5EncoderModel(refs["t5xxl"].config).eval()
    ref.load_state_dict(dequantized)
    text = standalone_text([tmp_path / "t5xxl_fp8_e4m3fn_scaled.safetensors"], torch.float32, "cpu")
    ((context, _),) = text.conditioning(PROMPT)
    with torch.no_grad():
        assert rel_err(context, ref(input_ids=t5_ids(PROMPT)).last_hidden_state) <= TOL

    state["encoder.block.0.layer.0.SelfAttention.q.scale_weight"] = torch.ones(T5_WIDTH, 1)  # block-wise: refused
    save_file(state, tmp_path / "blockwise.safetensors")
    with pytest.raises(ValueError, match="blockwise.safetensors.*only per-tensor float8 scales"):
        standalone_text([tmp_path / "blockwise.safetensors"], torch.float32, "cpu")


def test_t5_weights_stay_float8_and_are_upcast_on_use(files):
    t5 = standalone_text([files["t5xxl"]], torch.float32, "cpu").t5
    assert {p.dtype for p in t5.parameters()} == {torch.float8_e4m3fn}
    assert t5.encoder.block[0].layer[0].SelfAttention.q.weight.dtype == torch.float32


def test_without_t5_the_context_is_the_77_clip_tokens(refs, files):
    """No T5 in the checkpoint: no T5 tokens at all (diffusers would append zeros), L ‖ G padded to the MMDiT's
    context width."""
    ((context, extras),) = load(files, "checkpoint_no_t5", context_width=200).conditioning(PROMPT)
    ref_context, ref_pooled = reference(refs, PROMPT, with_t5=False, width=200)
    assert context.shape == (1, 77, 200)
    assert rel_err(context, ref_context) <= TOL and rel_err(extras["pooled_output"], ref_pooled) <= TOL


def test_t5_prompt_weights_act_against_the_empty_prompt(refs, files):
    """(word:w) scales T5's state of those tokens away from its encoding of ``</s>`` and pads, as ComfyUI does."""
    ((context, _),) = standalone_text([files["t5xxl"]], torch.float32, "cpu").conditioning("a (red:1.5) cat")
    ids = t5_ids("a red cat")
    empty = torch.tensor([[t5_text.EOS] + [t5_text.PAD] * 76])
    with torch.no_grad():
        z, z_empty = (refs["t5xxl"](input_ids=i).last_hidden_state for i in (ids, empty))
    z[:, 2] = (z[:, 2] - z_empty[:, 2]) * 1.5 + z_empty[:, 2]  # "▁red"
    assert rel_err(context, z) <= TOL


def test_errors_name_the_file_and_tower(files, tmp_path):
    with pytest.raises(ValueError, match="a second t5xxl"):
        standalone_text([files["t5xxl"], files["t5xxl"]], torch.float32, "cpu")
    broken = tmp_path / "broken_t5.safetensors"
    state = file_states_without(files["t5xxl"], "encoder.final_layer_norm.weight")
    save_file(state, broken)
    with pytest.raises(ValueError, match=r"broken_t5\.safetensors.*T5 text encoder.*final_layer_norm"):
        standalone_text([broken], torch.float32, "cpu")


def file_states_without(path: Path, key: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(path).items() if k != key}


# ---- full size, on meta ----------------------------------------------------------------------------------------

def incl_clips_text_shapes() -> dict[str, tuple[int, ...]]:
    lines = [line.split("\t") for line in INCL_CLIPS.read_text().splitlines() if line.startswith("text_encoders.")]
    return {k: tuple(int(x) for x in re.findall(r"\d+", shape)) for k, shape in lines}


def test_full_size_text_keys_and_shapes_equal_the_incl_clips_file():
    assert text_state_shapes() == incl_clips_text_shapes()


def test_full_size_towers_load_the_real_layout_with_the_published_parameter_counts():
    """The real key list, as meta tensors (T5 float8 as published), through the checkpoint loader's tower code."""
    states = {tower: {} for tower in TEXT_PREFIXES}
    for key, shape in incl_clips_text_shapes().items():
        tower = next(t for t, p in TEXT_PREFIXES.items() if key.startswith(p))
        dtype = torch.float8_e4m3fn if tower == "t5xxl" else torch.float16
        states[tower][key[len(TEXT_PREFIXES[tower]):]] = torch.empty(shape, dtype=dtype, device="meta")
    text = sd3_text_encoders(states, torch.float32, "meta")

    def count(module):
        return sum(p.numel() for p in module.parameters())  # the tied T5 embedding once

    assert (count(text.clip_l), count(text.clip_g), count(text.t5)) == (123_060_480, 694_659_840, 4_762_310_656)
    # T5 stays float8 when loaded for fp32 compute: 4.76 GB resident instead of 19.0 GB
    assert sum(p.numel() * p.element_size() for p in text.t5.parameters()) == 4_762_310_656
    assert text.context_width == 4096 and text.t5.config.num_layers == 24


def test_demo_towers_are_in_the_real_layout():
    """The tiny towers make-demo-model writes into SD3 checkpoints: the real key names (layer numbers aside), T5
    float8."""
    def pattern(key):
        return re.sub(r"\.\d+\.", ".N.", key)

    demo = demo_text_tensors(torch.Generator().manual_seed(0))
    assert {pattern(k) for k in demo} == {pattern(k) for k in incl_clips_text_shapes()}
    assert {v.dtype for k, v in demo.items() if k.startswith(TEXT_PREFIXES["t5xxl"])} == {torch.float8_e4m3fn}
