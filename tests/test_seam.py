"""The family seam holds: server/ knows nothing of diffusion (it asks nodes.catalog for model listings, family
names and missing-model hints); the families register and answer the questions the rest of the code asks; every
latent format previews; the sampler nodes need nothing of a MODEL but the denoiser protocol."""
import ast
import io
import re
import tokenize
from pathlib import Path

import pytest
import torch

from nodes.families import FAMILIES, family_from_name, load_builtin_families
from nodes.latent_format import LatentFormat
from nodes.node import Context
from nodes.sampling.schedules import DiscreteEps

SERVER = Path(__file__).parents[1] / "server"
# What server/ may import from nodes/: the node declaration and registry, socket types, and the model catalog.
NODES_API = {"nodes", "nodes.node", "nodes.types", "nodes.catalog"}
# Words and patterns that belong to model families, not to a graph server.
FAMILY_WORDS = (r"sd[_ -]?xl|(?<![a-z])xl(?![a-z])|(?<![a-z])sd[_ -]?[0-9]|stable[_ -]?diffusion|refiner|turbo|"
                r"clip[_ -]?[lg](?![a-z])|big[_ -]?g(?![a-z])|open[_ -]?clip|unet|mmdit|t5|\.safetensors|\.ckpt|"
                r"\.sft|\.pth")


def server_sources() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(SERVER.glob("*.py"))}


def code_words(source: str) -> list[tuple[int, str]]:
    """(line, text) of every name, string literal and comment of a module except its docstrings: what the code says,
    not how it is explained."""
    docstrings = {node.body[0].value.lineno for node in ast.walk(ast.parse(source))
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
                  and isinstance(node.body[0].value.value, str)}
    return [(tok.start[0], tok.string) for tok in tokenize.generate_tokens(io.StringIO(source).readline)
            if tok.type in (tokenize.NAME, tokenize.STRING, tokenize.COMMENT) and tok.start[0] not in docstrings]


def test_server_imports_only_the_nodes_api():
    for name, source in server_sources().items():
        for node in ast.walk(ast.parse(source)):
            modules = []
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module] + [f"{node.module}.{a.name}" for a in node.names if node.module == "nodes"]
            for module in modules:
                if module == "nodes" or module.startswith("nodes."):
                    assert module in NODES_API, f"server/{name} imports {module}; ask nodes.catalog instead"


def test_server_names_no_family_and_matches_no_file_names():
    """No family name, model-file suffix or family-specific word in server/'s code, strings (regular expressions
    included) or comments."""
    load_builtin_families()
    words = re.compile("|".join([FAMILY_WORDS] + [re.escape(f.name) for f in FAMILIES.values()]
                                + [re.escape(f.title) for f in FAMILIES.values()]), re.IGNORECASE)
    found = {name: hits for name, source in server_sources().items()
             if (hits := [(line, text) for line, text in code_words(source) if words.search(text)])}
    assert found == {}


def test_family_from_name():
    names = {"sd_xl_base_1.0.safetensors": "sdxl_base", "sd_xl_refiner_1.0.safetensors": "sdxl_refiner",
             "juggernautXL_v9.safetensors": "sdxl_base", "sdxl-turbo/": "sdxl_base", "pixel_art.safetensors": None,
             "v1-5-pruned-emaonly.safetensors": "sd1", "sd-v1-4.safetensors": "sd1", "dreamshaper_8.safetensors": None}
    for name, family in names.items():
        assert family_from_name(name) == family, name


def test_every_family_latent_format_previews():
    from nodes.sampling.preview import latent_to_rgb

    for family in load_builtin_families().values():
        fmt = family.latent_format
        image = latent_to_rgb(torch.randn(2, fmt.channels, 6, 10), fmt)
        assert image.size == (10, 6) and image.mode == "RGB", family.name


class ToyFlowLikeModel:
    """A MODEL that is no UNet and no family of ours: 16 latent channels, a network that takes only a context.
    Keeping the denoiser protocol is all the sampler nodes ask of it."""
    name, kind = "toy", "toy"
    latent_format = LatentFormat(channels=16, scale_factor=1.0, rgb_factors=((0.1, 0.0, -0.1),) * 16)

    def __init__(self, sampling=None):
        self.sampling = sampling or DiscreteEps()
        self.module = torch.nn.Linear(1, 1)
        self.calls = []

    def eps_fn(self, module=None):
        def eps(x_in, t, context):
            self.calls.append(tuple(x_in.shape))
            return 0.5 * x_in + context.mean()
        return eps

    def prepare(self, conditioning, role, latent_hw, device=None, seed=0):
        return [{"context": c, "start_percent": 0.0, "end_percent": 1.0, "strength": 1.0} for c, _ in conditioning]

    def with_sampling(self, sampling):
        return ToyFlowLikeModel(sampling)


def test_sampler_nodes_need_only_the_denoiser_protocol(registry):
    """KSampler and SamplerCustom on the toy: Empty Latent Image's 4 channels become the model's 16 (ComfyUI's
    rule), previews use the model's latent format, and ModelSamplingDiscrete swaps the parameterisation."""
    previews = []
    ctx = Context("1", progress=lambda node, value, total, preview: previews.append(preview))
    model = ToyFlowLikeModel()
    cond = [[torch.ones(1, 7, 8), {}]]
    (latent,) = registry["EmptyLatentImage"].call(ctx, {"width": 48, "height": 32, "batch_size": 1}).outputs
    (out,) = registry["KSampler"].call(ctx, dict(
        model=model, seed=1, steps=3, cfg=2.0, sampler_name="euler", scheduler="normal", positive=cond,
        negative=cond, latent_image=latent, denoise=1.0)).outputs
    assert out["samples"].shape == (1, 16, 4, 6) and model.calls == [(2, 16, 4, 6)] * 3
    assert [p.size for p in previews] == [(6, 4)] * 3
    (v_model,) = registry["ModelSamplingDiscrete"].call(ctx, {"model": model, "sampling": "v_prediction",
                                                              "zsnr": False}).outputs
    assert type(v_model.sampling).__name__ == "DiscreteV" and type(model.sampling).__name__ == "DiscreteEps"
    with pytest.raises(ValueError, match="KSampler: input 'latent_image' has 4 channels but this toy model"):
        registry["KSampler"].call(ctx, dict(
            model=model, seed=1, steps=1, cfg=2.0, sampler_name="euler", scheduler="normal", positive=cond,
            negative=cond, latent_image={"samples": torch.ones(1, 4, 4, 6)}, denoise=1.0))
