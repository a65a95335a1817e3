"""Upscale models (issue 18 item 2): a tiny random-weight ESRGAN saved in its real layouts, loaded through
UpscaleModelLoader and run by ImageUpscaleWithModel, gives what spandrel's own model gives called directly; tiled
upscaling against untiled has a stated error; bad files are refused with the node and input named."""
import pickle

import pytest
import torch
from safetensors.torch import load_file

from nodes.node import Context, Environment
from nodes.upscale_models import DEMO_UPSCALER, UpscaleModel, upscale, write_demo_upscaler
from server.cli import main

spandrel = pytest.importorskip("spandrel")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_demo_upscaler(root / "upscale_models")
    return root


def load(registry, models, name):
    ctx = Context(env=Environment(models_dir=str(models)))
    (model,) = registry["UpscaleModelLoader"].call(ctx, {"model_name": name}).outputs
    return ctx, model


def direct(path, images):
    """spandrel's model called directly, one picture at a time."""
    reference = spandrel.ModelLoader().load_from_file(str(path)).eval()
    return torch.cat([reference(im[None].movedim(-1, 1)) for im in images]).movedim(1, -1)


def new_arch(state: dict) -> dict:
    """The same ESRGAN in BasicSR's RRDBNet names, as Real-ESRGAN ships it (RealESRGAN_x4plus.pth)."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if key.startswith("model.1.sub.") and "RDB" in key:  # model.1.sub.0.RDB1.conv1.0.weight
            out[f"body.{parts[3]}.rdb{parts[4][3:]}.{parts[5]}.{parts[7]}"] = value
        else:
            name = {"model.0": "conv_first", "model.1.sub.1": "conv_body", "model.3": "conv_up1", "model.6": "conv_up2",
                    "model.8": "conv_hr", "model.10": "conv_last"}[key.rsplit(".", 1)[0]]
            out[f"{name}.{parts[-1]}"] = value
    return out


def test_demo_esrgan_is_in_the_original_layout(models):
    state = load_file(models / "upscale_models" / DEMO_UPSCALER)
    assert {"model.0.weight", "model.1.sub.0.RDB1.conv1.0.weight", "model.1.sub.0.RDB3.conv5.0.bias",
            "model.1.sub.1.weight", "model.3.weight", "model.6.weight", "model.8.weight", "model.10.bias"} <= set(state)
    assert state["model.0.weight"].shape == (8, 3, 3, 3)
    again = load_file(write_demo_upscaler(models / "again"))
    assert all(torch.equal(again[k], v) for k, v in state.items())  # same seed, same file


def test_node_output_equals_spandrel_called_directly(registry, models):
    ctx, model = load(registry, models, DEMO_UPSCALER)
    assert model.descriptor.architecture.id == "ESRGAN" and model.scale == 4
    images = torch.rand(2, 37, 50, 3)
    (out,) = registry["ImageUpscaleWithModel"].call(ctx, {"upscale_model": model, "image": images}).outputs
    want = direct(models / "upscale_models" / DEMO_UPSCALER, images)
    assert out.shape == (2, 148, 200, 3)
    assert torch.equal(out, want)  # below one 512² tile: exactly spandrel's output
    assert 0.2 < ((out > 0) & (out < 1)).float().mean()  # not all clipped: the comparison means something


def test_real_esrgan_pth_with_params_ema_loads_the_same_network(registry, models):
    state = load_file(models / "upscale_models" / DEMO_UPSCALER)
    torch.save({"params_ema": new_arch(state)}, models / "upscale_models" / "RealESRGAN_x4plus.pth")
    ctx, model = load(registry, models, "RealESRGAN_x4plus.pth")
    assert registry["UpscaleModelLoader"].inputs["model_name"].options(ctx.env) == [
        "RealESRGAN_x4plus.pth", DEMO_UPSCALER]
    images = torch.rand(1, 20, 24, 3)
    (out,) = registry["ImageUpscaleWithModel"].call(ctx, {"upscale_model": model, "image": images}).outputs
    assert torch.equal(out, direct(models / "upscale_models" / DEMO_UPSCALER, images))


def test_tiled_against_untiled(registry, models):
    """Tiles of at most 48 px overlapping by 16 on a 100×76 picture: 2×3 tiles evened out to 46 px, blended
    linearly over the overlaps. The tiny ESRGAN sees about 20 px around each pixel, more than half the overlap,
    so the seams differ a little on uniform noise (measured: max 0.03, mean 6e-4)."""
    _, model = load(registry, models, DEMO_UPSCALER)
    images = torch.rand(1, 76, 100, 3)
    whole = upscale(model, images, tile=512)
    counted = []
    tiled = upscale(model, images, tile=48, overlap=16, progress=lambda done, total: counted.append((done, total)))
    assert counted == [(i, 6) for i in range(1, 7)]
    err = (tiled - whole).abs()
    assert err.mean() < 2e-3 and err.max() < 0.1, (err.mean().item(), err.max().item())
    assert err.max() > 0  # the tiles really were separate runs


def test_a_tile_too_big_for_the_device_is_halved(registry):
    ran = []

    class NearestTwice:  # a stand-in descriptor that runs out of memory on windows over 32 px
        scale, input_channels, output_channels, model = 2, 3, 3, torch.nn.Conv2d(1, 1, 1)

        def __call__(self, window):
            if max(window.shape[-2:]) > 32:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            ran.append(window.shape[-1])
            return window.repeat_interleave(2, -1).repeat_interleave(2, -2)

    images = torch.rand(1, 64, 64, 3)
    out = upscale(UpscaleModel(NearestTwice(), "nearest"), images, tile=128, overlap=8)
    assert set(ran) == {27} and len(ran) == 9  # 128 → 64 → 32: 3×3 tiles (evened out to 27 px, 19 apart)
    torch.testing.assert_close(out, images.repeat_interleave(2, 1).repeat_interleave(2, 2))


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize("content, message", [(b"not weights", "cannot read 'bad.pth' as model weights"),
                                              (pickle.dumps({"x": Payload()}, protocol=2), "cannot read 'bad.pth'"),
                                              (None, "'bad.pth' is not an upscale model spandrel")],
                         ids=["garbage", "pickle with code", "unknown architecture"])
def test_bad_files_are_refused_naming_node_and_input(registry, tmp_path, content, message, capsys):
    folder = tmp_path / "upscale_models"
    folder.mkdir()
    if content is None:
        torch.save({"conv.weight": torch.zeros(1)}, folder / "bad.pth")
    else:
        (folder / "bad.pth").write_bytes(content)
    with pytest.raises(ValueError, match=f"UpscaleModelLoader: model_name: {message}"):
        registry["UpscaleModelLoader"].call(Context(env=Environment(models_dir=str(tmp_path))),
                                            {"model_name": "bad.pth"})
    assert "must never run" not in capsys.readouterr().out


def test_make_demo_model_writes_the_upscaler_beside_the_checkpoints(tmp_path, monkeypatch, capsys):
    import nodes.demo
    monkeypatch.setattr(nodes.demo, "make_demo_models", lambda folder: {})  # the checkpoints have their own tests
    assert main(["make-demo-model", str(tmp_path / "models" / "checkpoints")]) == 0
    assert (tmp_path / "models" / "upscale_models" / DEMO_UPSCALER).is_file()
    assert main(["make-demo-model", str(tmp_path / "c"), "--upscale-models", str(tmp_path / "u")]) == 0
    written = capsys.readouterr().out.split()
    assert str(tmp_path / "models" / "upscale_models" / DEMO_UPSCALER) in written
    assert str(tmp_path / "u" / DEMO_UPSCALER) in written
