"""Checkpoint detection and loading: single files (fp32/fp16/bf16), diffusers folders, informative errors."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from nodes.checkpoints import detect, load_checkpoint, load_vae
from nodes.weights import CheckpointError, UnsupportedCheckpoint, read_shapes
from nodes.sdxl.configs import TINY_BASE_UNET, TINY_REFINER_UNET, TINY_VAE
from tests.oracles import demo_models, rel_err


def tensors(kind="sdxl_base"):
    return load_file(str(demo_models()[kind]))


def shapes_of(sd):
    return {k: tuple(v.shape) for k, v in sd.items()}


def unet_out(unet):
    g = torch.Generator().manual_seed(0)
    cfg = unet.config
    args = (torch.randn(1, 4, 8, 8, generator=g), torch.tensor([500.0]),
            torch.randn(1, 77, cfg.context_dim, generator=g), torch.randn(1, cfg.adm_in_channels, generator=g))
    with torch.no_grad():
        return unet(*args)


@pytest.mark.parametrize("kind,cfg", [("sdxl_base", TINY_BASE_UNET), ("sdxl_refiner", TINY_REFINER_UNET)])
def test_single_file_loads_everything(kind, cfg):
    ck = load_checkpoint(demo_models()[kind])
    assert ck.kind == kind and ck.unet_config == cfg and ck.vae.config == TINY_VAE
    assert ck.dtype == torch.float32 and ck.unet.dtype == torch.float32
    assert ck.text.has_bigg and ck.text.has_clip_l == (kind == "sdxl_base")
    for module in (ck.unet, ck.vae, ck.text.bigg) + ((ck.text.clip_l,) if ck.text.has_clip_l else ()):
        assert not any(m.training for m in module.modules())
        assert all(p.device.type == "cpu" and not p.requires_grad for p in module.parameters())
        assert all(b.device.type == "cpu" for b in module.buffers())  # nothing left on meta
    # the loaded UNet holds exactly the file's tensors
    sd = tensors(kind)
    assert all(torch.equal(v, sd["model.diffusion_model." + k]) for k, v in ck.unet.state_dict().items())


def test_diffusers_folder_equals_single_file():
    single = load_checkpoint(demo_models()["sdxl_base"])
    folder = load_checkpoint(demo_models()["sdxl_base_diffusers"])
    assert folder.kind == "sdxl_base" and folder.unet_config == single.unet_config
    assert torch.equal(unet_out(folder.unet), unet_out(single.unet))
    for a, b in zip(folder.vae.state_dict().values(), single.vae.state_dict().values()):
        assert torch.equal(a, b)
    with torch.no_grad():
        ctx_a, pooled_a = folder.text.encode("a red cube", "a red cube")
        ctx_b, pooled_b = single.text.encode("a red cube", "a red cube")
    assert rel_err(ctx_a, ctx_b) <= 1e-5 and rel_err(pooled_a, pooled_b) <= 1e-5


@pytest.mark.parametrize("file_dtype", [torch.float16, torch.bfloat16])
def test_half_precision_files_load_as_fp32_on_cpu(tmp_path, file_dtype):
    sd = {k: v.to(file_dtype) if v.is_floating_point() else v for k, v in tensors().items()}
    save_file(sd, str(tmp_path / "half.safetensors"))
    ck = load_checkpoint(tmp_path / "half.safetensors")
    assert ck.unet.dtype == torch.float32 and ck.vae.dtype == torch.float32
    ref = load_checkpoint(demo_models()["sdxl_base"], with_text=False)
    assert rel_err(unet_out(ck.unet), unet_out(ref.unet)) < 0.05  # only the file's rounding differs
    half = load_checkpoint(tmp_path / "half.safetensors", dtype=file_dtype, with_text=False)
    assert half.unet.dtype == file_dtype


def test_converting_read_drops_mapped_pages_behind(tmp_path, monkeypatch):
    """Tensors that change dtype are copied out of a memory map whose pages are dropped behind the copy (here after
    every page, so the page-aligned bookkeeping runs on a tiny file): values are the file's, exactly."""
    import mmap

    import nodes.weights as weights
    sd = {k: v.half() if v.is_floating_point() else v for k, v in tensors().items()}
    save_file(sd, str(tmp_path / "half.safetensors"))
    monkeypatch.setattr(weights, "_DROP_EVERY", mmap.PAGESIZE)
    got = weights.read_tensors(tmp_path / "half.safetensors", lambda k: k, torch.float32, "cpu")
    assert got.keys() == sd.keys()
    for k, v in sd.items():
        assert got[k].dtype == (torch.float32 if v.is_floating_point() else v.dtype)
        assert torch.equal(got[k], v.to(got[k].dtype)), k


def test_detect_base_and_refiner():
    assert detect(shapes_of(tensors("sdxl_base"))) == "sdxl_base"
    assert detect(shapes_of(tensors("sdxl_refiner"))) == "sdxl_refiner"


def _unsupported(shapes, *words):
    with pytest.raises(UnsupportedCheckpoint) as e:
        detect(shapes)
    for w in words:
        assert w in str(e.value)


def test_detect_unsupported_says_what_it_found():
    base = shapes_of(tensors())
    inpaint = dict(base)
    inpaint["model.diffusion_model.input_blocks.0.0.weight"] = (32, 9, 3, 3)
    _unsupported(inpaint, "inpainting")
    sd15 = {"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
            "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768)}
    assert detect(sd15) == "sd1"
    _unsupported({**sd15, "model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3)}, "inpainting SD 1.x")
    unet_only = {k: v for k, v in base.items() if not k.startswith("conditioner.")}
    del unet_only["model.diffusion_model.label_emb.0.0.weight"]
    _unsupported(unet_only, "not the text encoders of a supported family (SD 1.x, ")
    vae_only = {k: v for k, v in base.items() if k.startswith("first_stage_model.")}
    _unsupported(vae_only, "standalone VAE")
    no_text = {k: v for k, v in base.items() if not k.startswith("conditioner.")}
    _unsupported(no_text, "text encoders")
    _unsupported({"foo.weight": (3,)}, "no diffusion model", "foo.weight")


def test_errors_name_missing_and_unexpected_keys(tmp_path):
    sd = tensors()
    del sd["model.diffusion_model.out.2.bias"]
    save_file(sd, str(tmp_path / "missing.safetensors"))
    with pytest.raises(CheckpointError, match=r"UNet.*missing 1: out\.2\.bias"):
        load_checkpoint(tmp_path / "missing.safetensors")
    sd = tensors()
    sd["model.diffusion_model.out.2.extra"] = torch.zeros(1)
    save_file(sd, str(tmp_path / "extra.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected 1: out\.2\.extra"):
        load_checkpoint(tmp_path / "extra.safetensors")
    sd = tensors()
    sd["something.else"] = torch.zeros(1)
    save_file(sd, str(tmp_path / "stray.safetensors"))
    with pytest.raises(CheckpointError, match="something.else"):
        load_checkpoint(tmp_path / "stray.safetensors")


def test_bad_files(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_checkpoint(tmp_path / "junk.safetensors")
    data = demo_models()["sdxl_base"].read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp_path / "cut.safetensors")
    (tmp_path / "model.ckpt").write_bytes(b"pickle")
    with pytest.raises(UnsupportedCheckpoint, match="only .safetensors"):
        load_checkpoint(tmp_path / "model.ckpt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "absent.safetensors")
    with pytest.raises(UnsupportedCheckpoint, match="found no VAE"):
        save_file({"x": torch.zeros(1)}, str(tmp_path / "x.safetensors"))
        load_vae(tmp_path / "x.safetensors")


def test_standalone_vae_latent_scale_comes_from_its_family_or_name(tmp_path):
    """SD 1.x/2.x and SDXL VAEs share one layout: a full checkpoint's VAE has its family's scale, a standalone file's
    comes from its name (the SD VAEs people download say so), SDXL's otherwise."""
    sd = {k[len("first_stage_model."):]: v for k, v in tensors().items() if k.startswith("first_stage_model.")}
    for name, scale in (("vae-ft-mse-840000-ema-pruned.safetensors", 0.18215), ("sdxl_vae.safetensors", 0.13025),
                        ("mine.safetensors", 0.13025)):
        save_file(sd, str(tmp_path / name))
        assert load_vae(tmp_path / name).config.scaling_factor == scale, name
    assert load_vae(demo_models()["sd1"]).config.scaling_factor == 0.18215


def test_diffusers_folder_heads_come_from_config(tmp_path):
    """A diffusers config with other than 64-channel heads is honoured (single files cannot say this)."""
    import shutil
    src = demo_models()["sdxl_base_diffusers"]
    shutil.copytree(src / "unet", tmp_path / "unet")
    conf = json.loads((tmp_path / "unet" / "config.json").read_text())
    conf["attention_head_dim"] = [2, 4, 8]  # 16 channels per head
    (tmp_path / "unet" / "config.json").write_text(json.dumps(conf))
    from nodes.checkpoints import load_diffusers_unet
    unet, cfg = load_diffusers_unet(tmp_path / "unet")
    assert cfg.num_head_channels == 16
    assert unet.input_blocks[4][1].transformer_blocks[0].attn1.heads == 4


def test_diffusers_folder_kind_is_checked(tmp_path):
    """A base folder that lost text_encoder/ is not taken for a refiner."""
    import shutil
    shutil.copytree(demo_models()["sdxl_base_diffusers"], tmp_path / "pipe")
    shutil.rmtree(tmp_path / "pipe" / "text_encoder")
    with pytest.raises(UnsupportedCheckpoint, match="found only text_encoder_2/ but a UNet vector input of 1568"):
        load_checkpoint(tmp_path / "pipe")
    with pytest.raises(UnsupportedCheckpoint, match="no unet/"):
        load_checkpoint(tmp_path)


def test_read_shapes_matches_safetensors():
    sd = tensors()
    assert read_shapes(demo_models()["sdxl_base"]) == shapes_of(sd)


def test_state_slots_are_the_state_dict():
    """state_slots (the loader's key check) lists exactly state_dict()'s keys and tensors, persistent buffers included
    and non-persistent ones left out, for every module the loader fills."""
    from nodes.sdxl.meta import state_slots
    ck = load_checkpoint(demo_models()["sdxl_base"])
    for module in (ck.unet, ck.vae, ck.text.clip_l, ck.text.bigg):
        slots, sd = state_slots(module), module.state_dict()
        assert list(slots) == list(sd) and all(slots[k] is sd[k] or torch.equal(slots[k], sd[k]) for k in sd)
    bn = torch.nn.BatchNorm1d(3)
    bn.register_buffer("scratch", torch.zeros(1), persistent=False)
    assert list(state_slots(bn)) == list(bn.state_dict()) == ["weight", "bias", "running_mean", "running_var",
                                                              "num_batches_tracked"]


def test_adopt_checks_every_key_before_changing_anything():
    from torch import nn

    from nodes.sdxl.meta import StateMismatch, adopt, empty_modules
    with empty_modules():
        model = nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3))
    good = {"0.weight": torch.randn(3, 2), "0.bias": torch.randn(3), "1.weight": torch.randn(3), "1.bias": torch.randn(3)}
    bad = {**good, "0.weight": torch.randn(2, 2), "extra": torch.zeros(1)}
    del bad["1.bias"]
    with pytest.raises(StateMismatch) as e:
        adopt(model, bad)
    assert (e.value.missing, e.value.unexpected, e.value.wrong) == (["1.bias"], ["extra"], ["0.weight (2, 2) vs (3, 2)"])
    assert "missing 1: 1.bias; unexpected 1: extra; wrong shape 1: 0.weight (2, 2) vs (3, 2)" == str(e.value)
    assert all(p.is_meta for p in model.parameters())  # nothing was adopted
    adopt(model, good)
    assert all(p is not good[k] and p.data_ptr() == good[k].data_ptr() and not p.requires_grad
               for k, p in model.state_dict(keep_vars=True).items())
    assert not any(m.training for m in model.modules())


def test_empty_modules_skips_init_only_inside():
    import gc

    from torch import nn

    from nodes.sdxl.meta import building, empty_modules
    setattr_ = nn.Module.__setattr__
    with empty_modules():
        inside = nn.Conv2d(2, 3, 1)
    assert inside.weight.is_meta
    outside = nn.Conv2d(2, 3, 1)  # the layers' own reset_parameters is back: random init
    assert outside.weight.abs().sum() > 0 and "reset_parameters" not in nn.Conv2d.__dict__
    with pytest.raises(RuntimeError), building():
        with empty_modules():  # nested: the outer block's set-up stays until it ends
            pass
        assert not gc.isenabled() and nn.Module.__setattr__ is not setattr_
        assert torch.nn.Linear(2, 2).weight.device.type == "cpu"  # no meta device outside empty_modules
        raise RuntimeError
    assert gc.isenabled() and nn.Module.__setattr__ is setattr_


def test_building_sets_attributes_as_torch_does():
    """Modules built in ``building()`` (through its fast ``__setattr__``) have the same parameters, buffers,
    submodules and attributes as the same modules built outside it, and the same errors."""
    from torch import nn

    from nodes.sdxl.meta import building

    class Block(nn.Module):
        scale = 2.0  # a class attribute: assigning a Parameter under its name is an error, as in torch

        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(3, 4)
            self.norm = nn.LayerNorm(4)
            self.gain = nn.Parameter(torch.ones(4))
            self.register_buffer("steps", torch.zeros(1))
            self.steps = torch.ones(1)  # an existing buffer: replaced as a buffer
            self.depth = 3
            self.depth = 4  # a plain attribute set twice
            self.extra = None
            self.proj = nn.Linear(3, 5)  # an existing submodule replaced

    def describe(m):
        return ({k: tuple(v.shape) for k, v in m.state_dict().items()}, [n for n, _ in m.named_modules()],
                {k: v for k, v in vars(m).items() if not k.startswith("_")}, sorted(m._buffers), sorted(m._parameters))

    torch.manual_seed(0)
    plain = Block()
    with building():
        built = Block()
        with pytest.raises(KeyError, match="already exists"):
            built.scale = nn.Parameter(torch.ones(1))
        with pytest.raises(TypeError):
            built.gain = torch.ones(4)  # a tensor where a parameter was
    assert describe(built) == describe(plain) and "depth" in vars(built) and built.depth == 4
