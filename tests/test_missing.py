"""Shared workflows that need what we lack: missing node types and missing model files are reported, not crashed on,
by `validate`, the CLI and `POST /prompt`."""
import json
import shutil

from server_helpers import make_config
from template_helpers import demo_checkpoints, load_template

from nodes.demo import make_demo_vaes
from nodes.node import Environment
from server.app import create_app
from server.cli import main
from server.graph import ui_to_api, validate

SAVE = {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "t"}}
AUDIO = "audio_stable_audio_example"  # a shared workflow whose audio nodes latentgraph does not have


def checkpoints_env(tmp_path, **files) -> Environment:
    """A models folder whose checkpoints/ holds the demo files under the given names ({name: "sdxl_base"})."""
    folder = tmp_path / "models" / "checkpoints"
    folder.mkdir(parents=True)
    for name, kind in files.items():
        shutil.copyfile(demo_checkpoints()[kind], folder / name)
    return Environment(models_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "out"))


def loader_prompt(ckpt: str) -> dict:
    return {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
            "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["4", 2]}},
            "9": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "t"}}}


def test_missing_node_types_are_listed_with_their_node_ids(registry):
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
              "2": {"class_type": "FancyUpscaler", "inputs": {"image": ["1", 0]}, "_meta": {"title": "Upscale ×4"}},
              "3": {"class_type": "FancyUpscaler", "inputs": {"image": ["2", 0]}},
              "7": {"class_type": "FaceFixer", "inputs": {"image": ["3", 0]}},
              "9": dict(SAVE, inputs={"images": ["7", 0], "filename_prefix": "t"})}
    report = validate(prompt, registry)
    assert not report.ok
    assert report.error["type"] == "missing_node_type"
    assert report.error["extra_info"]["missing_node_types"] == {"FancyUpscaler": ["2", "3"], "FaceFixer": ["7"]}
    assert report.error["extra_info"]["node_title"] == "Upscale ×4"  # what ComfyUI's frontend dialog shows
    assert "FancyUpscaler (nodes 2, 3)" in report.error["message"] and "FaceFixer (node 7)" in report.error["message"]
    assert {n: [e["type"] for e in v["errors"]] for n, v in report.node_errors.items()} == \
        {"2": ["missing_node_type"], "3": ["missing_node_type"], "7": ["missing_node_type"]}


def test_missing_output_node_type_is_still_a_missing_node_report(registry):
    """Without our class for the only output node there is nothing to run; the report still names the class."""
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
              "2": {"class_type": "SaveVideo", "inputs": {"video": ["1", 0]}}}
    report = validate(prompt, registry)
    assert report.error["type"] == "missing_node_type"
    assert report.error["extra_info"]["missing_node_types"] == {"SaveVideo": ["2"]}


def test_real_template_lists_its_missing_classes(registry):
    """audio_stable_audio_example uses ComfyUI's audio nodes; the report names each, with ids."""
    report = validate(ui_to_api(load_template(AUDIO), registry), registry)
    missing = report.error["extra_info"]["missing_node_types"]
    assert report.error["type"] == "missing_node_type"
    assert {"EmptyLatentAudio", "VAEDecodeAudio"} <= set(missing)
    assert all(ids and all(isinstance(i, str) for i in ids) for ids in missing.values())
    assert "CheckpointLoaderSimple" not in missing and "VAEDecode" not in missing


def test_missing_checkpoint_names_folder_and_the_one_same_family_file(registry, tmp_path):
    env = checkpoints_env(tmp_path, **{"my_base.safetensors": "sdxl_base", "my_refiner.safetensors": "sdxl_refiner"})
    report = validate(loader_prompt("sd_xl_base_1.0.safetensors"), registry, env)
    (err,) = report.node_errors["4"]["errors"]
    assert err["type"] == "missing_model"
    assert err["extra_info"]["folder"] == "checkpoints" and err["extra_info"]["file"] == "sd_xl_base_1.0.safetensors"
    assert err["extra_info"]["suggestion"] == "my_base.safetensors"
    assert str(tmp_path / "models" / "checkpoints") in err["message"]
    assert "the only installed SDXL base checkpoint is 'my_base.safetensors'" in err["message"]
    assert report.error["extra_info"]["missing_models"] == [{"node_id": "4", "input_name": "ckpt_name",
                                                             "file": "sd_xl_base_1.0.safetensors",
                                                             "folder": "checkpoints",
                                                             "suggestion": "my_base.safetensors"}]
    refiner = validate(loader_prompt("sd_xl_refiner_1.0.safetensors"), registry, env).node_errors["4"]["errors"][0]
    assert refiner["extra_info"]["suggestion"] == "my_refiner.safetensors" and "SDXL refiner" in refiner["message"]


def test_missing_sd15_checkpoint_names_the_installed_sd15_one(registry, tmp_path):
    env = checkpoints_env(tmp_path, **{"dreamshaper.safetensors": "sd1", "my_base.safetensors": "sdxl_base"})
    err = validate(loader_prompt("v1-5-pruned-emaonly.safetensors"), registry, env).node_errors["4"]["errors"][0]
    assert err["extra_info"]["suggestion"] == "dreamshaper.safetensors"
    assert "the only installed SD 1.x checkpoint is 'dreamshaper.safetensors'" in err["message"]


def test_no_suggestion_when_the_family_is_ambiguous_or_unknown(registry, tmp_path):
    env = checkpoints_env(tmp_path, **{"a.safetensors": "sdxl_base", "b.safetensors": "sdxl_base"})
    err = validate(loader_prompt("sd_xl_base_1.0.safetensors"), registry, env).node_errors["4"]["errors"][0]
    assert err["type"] == "missing_model" and err["extra_info"]["suggestion"] is None
    assert "the only" not in err["message"]
    err = validate(loader_prompt("v1-5-pruned-emaonly.safetensors"), registry, env).node_errors["4"]["errors"][0]
    assert err["extra_info"]["suggestion"] is None  # an SD 1.5 name: no SDXL file stands in for it


def test_missing_vae_names_the_vae_folder(registry, tmp_path):
    prompt = {"1": {"class_type": "VAELoader", "inputs": {"vae_name": "sdxl_vae.safetensors"}},
              "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
              "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 0]}},
              "9": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "t"}}}
    env = Environment(models_dir=str(tmp_path / "models"))
    (err,) = validate(prompt, registry, env).node_errors["1"]["errors"]
    assert err["type"] == "missing_model" and err["extra_info"]["folder"] == "vae"
    assert "'sdxl_vae.safetensors' is not installed: expected in" in err["message"]


def test_the_demo_sd3_vae_stands_in_for_an_sd3_vae_only(registry, tmp_path):
    """With the demo's vae/ (the SD3 VAE alone) installed, a missing sd3_vae gets it as the suggestion; a missing
    sdxl_vae does not: its latents have 4 channels, not 16."""
    make_demo_vaes(tmp_path / "models" / "vae")
    env = Environment(models_dir=str(tmp_path / "models"))
    for name, suggestion in (("sdxl_vae.safetensors", None), ("sd3_vae.safetensors", "demo_sd3_vae.safetensors")):
        prompt = {"1": {"class_type": "VAELoader", "inputs": {"vae_name": name}},
                  "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
                  "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 0]}},
                  "9": dict(SAVE, inputs={"images": ["6", 0], "filename_prefix": "t"})}
        (err,) = validate(prompt, registry, env).node_errors["1"]["errors"]
        assert err["type"] == "missing_model" and err["extra_info"]["suggestion"] == suggestion, name


def test_a_wrong_non_model_combo_is_still_value_not_in_list(registry):
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
              "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "magic", "width": 8,
                                                             "height": 8, "crop": "disabled"}},
              "9": dict(SAVE, inputs={"images": ["2", 0], "filename_prefix": "t"})}
    assert validate(prompt, registry).node_errors["2"]["errors"][0]["type"] == "value_not_in_list"


def test_cli_validate_prints_the_missing_report(tmp_path, capsys):
    path = tmp_path / "audio.json"
    path.write_text(json.dumps(load_template(AUDIO)))
    code = main(["validate", str(path), "--models", str(tmp_path / "models"), "--json"])
    out, err = capsys.readouterr()
    assert code != 0 and "Traceback" not in err
    report = json.loads(out)
    assert report["error"]["type"] == "missing_node_type" and "EmptyLatentAudio" in report["error"]["message"]


async def test_prompt_route_reports_missing_nodes_and_models(aiohttp_client, tmp_path):
    client = await aiohttp_client(create_app(make_config(tmp_path)))
    resp = await client.post("/api/prompt", json={"prompt": load_template(AUDIO)})
    data = await resp.json()
    assert resp.status == 400 and data["error"]["type"] == "missing_node_type"
    assert "VAEDecodeAudio" in data["error"]["extra_info"]["missing_node_types"]
    resp = await client.post("/prompt", json={"prompt": load_template("image_sdxl_simple")})
    data = await resp.json()
    assert resp.status == 400
    (err,) = data["node_errors"]["15"]["errors"]
    assert err["type"] == "missing_model" and err["extra_info"]["file"] == "sd_xl_base_1.0.safetensors"
    assert data["error"]["extra_info"]["missing_models"][0]["folder"] == "checkpoints"


def test_legacy_group_node_is_named_as_such(registry):
    prompt = {"1": {"class_type": "workflow>my sampler", "inputs": {}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}}}
    report = validate(prompt, registry)
    assert report.error["extra_info"]["missing_node_types"] == {"workflow>my sampler": ["1"]}
    assert "legacy group node" in report.node_errors["1"]["errors"][0]["message"]


def test_comfyui_builtins_are_not_implemented_and_custom_nodes_not_installed(registry, tmp_path):
    """A ComfyUI built-in we lack and a third-party node are told apart; missing model files are listed beside
    them in the top-level error."""
    from server.missing import comfyui_builtin_nodes

    assert {"KSampler", "ImageBlend", "ImageUpscaleWithModel", "LatentCompositeMasked", "ConditioningAverage",
            "LoraLoader", "ControlNetApplyAdvanced", "CLIPVisionEncode"} <= comfyui_builtin_nodes()
    builtin = next(n for n in sorted(comfyui_builtin_nodes()) if n not in registry)
    prompt = {**loader_prompt("sd_xl_base_1.0.safetensors"),
              "2": {"class_type": builtin, "inputs": {"image": ["6", 0]}},
              "3": {"class_type": "FaceFixer", "inputs": {"image": ["2", 0]}},
              "10": dict(SAVE, inputs={"images": ["3", 0], "filename_prefix": "t"})}
    report = validate(prompt, registry, Environment(models_dir=str(tmp_path / "models")))
    assert report.error["type"] == "missing_node_type"
    message = report.error["message"]
    assert f"not implemented by latentgraph (ComfyUI built-ins): {builtin} (node 2)" in message
    assert "not installed (custom nodes): FaceFixer (node 3)" in message
    assert "missing model files: sd_xl_base_1.0.safetensors (checkpoints)" in message
    assert report.error["extra_info"]["not_implemented"] == [builtin]
    assert report.error["extra_info"]["missing_models"][0]["node_id"] == "4"
    assert report.node_errors["2"]["errors"][0]["message"] == \
        f"{builtin!r} is a ComfyUI built-in node that is not implemented by latentgraph"
    assert report.node_errors["2"]["errors"][0]["extra_info"]["comfyui_builtin"] is True
    assert "custom node" in report.node_errors["3"]["errors"][0]["message"]
    assert report.node_errors["4"]["errors"][0]["type"] == "missing_model"


ENVELOPE = {"input": {"workflow": {"1": {"class_type": "EmptyImage", "inputs": {}}}, "images": []}}


def test_cli_names_a_serverless_envelope(tmp_path, capsys):
    path = tmp_path / "request.json"
    path.write_text(json.dumps(ENVELOPE))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert 'serverless request envelope {"input": {"workflow": …}}' in err and "input.workflow" in err


async def test_prompt_route_names_a_serverless_envelope(aiohttp_client, tmp_path):
    client = await aiohttp_client(create_app(make_config(tmp_path)))
    for body in (ENVELOPE, {"prompt": ENVELOPE}):
        resp = await client.post("/prompt", json=body)
        data = await resp.json()
        assert resp.status == 400 and data["error"]["type"] == "invalid_prompt"
        assert "serverless request envelope" in data["error"]["message"], body
