"""Offline CLIP tokenizer: ids equal HF CLIPTokenizer and open_clip's SimpleTokenizer; windows; weighting."""
import subprocess
import sys

import pytest

from nodes.sdxl.prompt_weights import parse_weights
from nodes.sdxl.tokenizer import CONTEXT, EOT, PAD_BIGG, PAD_CLIP_L, SOT, shared_tokenizer

PROMPTS = [
    "a photo of a cat",
    "A majestic LION, standing on a rock at sunset; 35mm, f/1.8, 4k!",
    "it's what they'll do — café naïve résumé 123 4567",
    "",
    "   lots   of\twhitespace \n here ",
]
LONG = ("a highly detailed oil painting of an old lighthouse on a rocky coast during a violent storm, "
        "waves crashing, seagulls circling, dramatic lighting, dark clouds, rain, moody atmosphere, "
        "by a famous romantic era painter, trending on an art website, masterpiece, best quality, "
        "intricate brushwork, warm lantern glow in the window, a small boat struggling in the distance, "
        "foam and spray everywhere, cinematic composition, golden ratio, muted palette with teal accents")


@pytest.fixture(scope="module")
def ours():
    return shared_tokenizer()


@pytest.fixture(scope="module")
def open_clip_tok():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


@pytest.fixture(scope="module")
def hf_tok(open_clip_tok):
    """HF CLIPTokenizer built offline from open_clip's vocabulary (transformers 5: vocab= dict, merges= tuples)."""
    from transformers import CLIPTokenizer

    rename = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {rename.get(t, t): i for t, i in open_clip_tok.encoder.items()}
    merges = sorted(open_clip_tok.bpe_ranks, key=open_clip_tok.bpe_ranks.get)
    return CLIPTokenizer(vocab=vocab, merges=merges)


def ids(windows):
    return [[i for i, _ in w] for w in windows]


def test_long_prompt_really_is_long(ours):
    assert 75 < len(ours.encode(LONG)) <= 150


@pytest.mark.parametrize("text", PROMPTS + [LONG])
def test_clip_l_first_window_equals_hf_tokenizer(ours, hf_tok, text):
    ref = hf_tok(text, padding="max_length", max_length=CONTEXT, truncation=True).input_ids
    assert ids(ours.tokenize_weighted(text, PAD_CLIP_L))[0] == ref


@pytest.mark.parametrize("text", PROMPTS + [LONG])
def test_bigg_first_window_equals_open_clip(ours, open_clip_tok, text):
    ref = open_clip_tok([text])[0].tolist()  # truncates to 77 with EOT last, pads with 0
    assert ids(ours.tokenize_weighted(text, PAD_BIGG))[0] == ref


@pytest.mark.parametrize("text", PROMPTS + [LONG])
def test_content_ids_equal_both_references(ours, hf_tok, open_clip_tok, text):
    assert ours.encode(text) == hf_tok(text, add_special_tokens=False).input_ids == open_clip_tok.encode(text)


def test_long_prompt_windows_not_truncated(ours, hf_tok):
    content = hf_tok(LONG, add_special_tokens=False).input_ids
    windows = ids(ours.tokenize_weighted(LONG, PAD_CLIP_L))
    assert len(windows) == 2 and all(len(w) == CONTEXT for w in windows)
    assert windows[0] == [SOT, *content[:75], EOT]
    rest = content[75:]
    assert windows[1] == [SOT, *rest, EOT] + [PAD_CLIP_L] * (75 - len(rest))
    g = ids(ours.tokenize_weighted(LONG, PAD_BIGG))
    assert g[1] == [SOT, *rest, EOT] + [0] * (75 - len(rest))


def test_window_boundaries(ours):
    word = "cat "  # one token each
    assert len(ours.encode(word * 75)) == 75
    assert len(ours.tokenize_weighted(word * 75, PAD_CLIP_L)) == 1
    assert len(ours.tokenize_weighted(word * 76, PAD_CLIP_L)) == 2
    assert len(ours.tokenize_weighted(word * 151, PAD_CLIP_L)) == 3
    empty = ours.tokenize_weighted("", PAD_BIGG)
    assert ids(empty) == [[SOT, EOT] + [0] * 75] and all(w == 1.0 for _, w in empty[0])


def test_weights_attach_to_the_right_tokens(ours):
    weighted = ours.tokenize_weighted("a photo of a (cat:1.5) on (a (red) mat)", PAD_CLIP_L)[0]
    plain = ours.tokenize_weighted("a photo of a cat on a red mat", PAD_CLIP_L)[0]
    assert ids([weighted]) == ids([plain])
    got = [round(w, 6) for _, w in weighted[:11]]
    assert got == [1.0, 1.0, 1.0, 1.0, 1.0, 1.5, 1.0, 1.1, 1.21, 1.1, 1.0]  # SOT a photo of a cat on a red mat EOT


def test_escaped_parens_are_literal(ours, open_clip_tok):
    windows = ours.tokenize_weighted(r"a \(cat\) b", PAD_CLIP_L)
    assert ids(windows)[0][:6] == [SOT, *open_clip_tok.encode("a (cat) b")][:6]
    assert all(w == 1.0 for _, w in windows[0])


@pytest.mark.parametrize("text, expected", [
    ("a (red:1.5) cat", [("a ", 1.0), ("red", 1.5), (" cat", 1.0)]),
    ("((a)) b", [("a", 1.1 * 1.1), (" b", 1.0)]),
    ("(a (b:1.2):0.5)", [("a ", 0.5), ("b", 0.6)]),
    ("((a):1.5)", [("a", 1.65)]),
    ("(a:b)", [("a:b", 1.1)]),
    ("(x:-0.5)", [("x", -0.5)]),
    (r"\(not weighted\)", [("(not weighted)", 1.0)]),
    ("stray) and (open", [("stray) and (open", 1.0)]),
    ("(word:1.2", [("(word:1.2", 1.0)]),
    ("time: 12:30 (b:0.8)", [("time: 12:30 ", 1.0), ("b", 0.8)]),
])
def test_parse_weights(text, expected):
    got = parse_weights(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected])


def test_offline_without_importing_open_clip():
    code = ("import sys; from nodes.sdxl.tokenizer import ClipTokenizer; t = ClipTokenizer(); "
            "assert t.encode('a photo of a cat') == [320, 1125, 539, 320, 2368]; "
            "assert 'open_clip' not in sys.modules and 'torchvision' not in sys.modules, 'heavy import'")
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
