"""ComfyUI's node set as `latentgraph nodes --json` and GET /object_info list it, checked against the reference
input lists (comfyui-compat.md §11, §13; for the nodes added since ComfyUI's docs, its /object_info, its frontend's
English node names and the widget values of its shared workflows): names, order, types, defaults, bounds, outputs
and display names."""
import json

import pytest

from nodes.sampling.samplers import SAMPLER_NAMES
from nodes.sampling.schedules import SCHEDULER_NAMES
from server.graph import ui_to_api
from sdxl_helpers import cli

BIG = 2 ** 64 - 1
MAXRES = 16384
COMBO = "COMBO"  # a list of choices in the schema

# class: (display name, [(input, type, options that must match)], outputs) — comfyui-compat.md §11
REFERENCE = {
    "CheckpointLoaderSimple": ("Load Checkpoint", [("ckpt_name", COMBO, {})], ["MODEL", "CLIP", "VAE"]),
    "VAELoader": ("Load VAE", [("vae_name", COMBO, {})], ["VAE"]),
    "UNETLoader": ("Load Diffusion Model", [
        ("unet_name", COMBO, {}), ("weight_dtype", ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"], {})],
        ["MODEL"]),
    "LoraLoader": ("Load LoRA (Model and CLIP)", [
        ("model", "MODEL", {}), ("clip", "CLIP", {}), ("lora_name", COMBO, {}),
        ("strength_model", "FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}),
        ("strength_clip", "FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01})], ["MODEL", "CLIP"]),
    "LoraLoaderModelOnly": ("Load LoRA", [
        ("model", "MODEL", {}), ("lora_name", COMBO, {}),
        ("strength_model", "FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01})], ["MODEL"]),
    "CLIPTextEncode": ("CLIP Text Encode (Prompt)",
                       [("text", "STRING", {"multiline": True, "dynamicPrompts": True}), ("clip", "CLIP", {})],
                       ["CONDITIONING"]),
    "CLIPSetLastLayer": ("CLIP Set Last Layer",
                         [("clip", "CLIP", {}), ("stop_at_clip_layer", "INT", {"default": -1, "min": -24, "max": -1,
                                                                               "step": 1})], ["CLIP"]),
    "ModelSamplingDiscrete": ("ModelSamplingDiscrete", [
        ("model", "MODEL", {}), ("sampling", ["eps", "v_prediction", "lcm", "x0"], {}),
        ("zsnr", "BOOLEAN", {"default": False})], ["MODEL"]),
    "KSamplerSelect": ("KSamplerSelect", [("sampler_name", COMBO, {})], ["SAMPLER"]),
    "BasicScheduler": ("BasicScheduler", [
        ("model", "MODEL", {}), ("scheduler", COMBO, {}), ("steps", "INT", {"default": 20, "min": 1, "max": 10000}),
        ("denoise", "FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01})], ["SIGMAS"]),
    "SDTurboScheduler": ("SDTurboScheduler", [
        ("model", "MODEL", {}), ("steps", "INT", {"default": 1, "min": 1, "max": 10}),
        ("denoise", "FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01})], ["SIGMAS"]),
    "SplitSigmas": ("SplitSigmas", [("sigmas", "SIGMAS", {}), ("step", "INT", {"default": 0, "min": 0, "max": 10000})],
                    ["SIGMAS", "SIGMAS"]),
    "RandomNoise": ("RandomNoise", [("noise_seed", "INT", {"default": 0, "min": 0, "max": BIG,
                                                           "control_after_generate": True})], ["NOISE"]),
    "DisableNoise": ("DisableNoise", [], ["NOISE"]),
    "CFGGuider": ("CFGGuider", [
        ("model", "MODEL", {}), ("positive", "CONDITIONING", {}), ("negative", "CONDITIONING", {}),
        ("cfg", "FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01})], ["GUIDER"]),
    "BasicGuider": ("BasicGuider", [("model", "MODEL", {}), ("conditioning", "CONDITIONING", {})], ["GUIDER"]),
    "SamplerCustom": ("SamplerCustom", [
        ("model", "MODEL", {}), ("add_noise", "BOOLEAN", {"default": True}),
        ("noise_seed", "INT", {"default": 0, "min": 0, "max": BIG, "control_after_generate": True}),
        ("cfg", "FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
        ("positive", "CONDITIONING", {}), ("negative", "CONDITIONING", {}), ("sampler", "SAMPLER", {}),
        ("sigmas", "SIGMAS", {}), ("latent_image", "LATENT", {})], ["LATENT", "LATENT"]),
    "SamplerCustomAdvanced": ("SamplerCustomAdvanced", [
        ("noise", "NOISE", {}), ("guider", "GUIDER", {}), ("sampler", "SAMPLER", {}), ("sigmas", "SIGMAS", {}),
        ("latent_image", "LATENT", {})], ["LATENT", "LATENT"]),
    "CLIPTextEncodeSDXL": ("CLIPTextEncodeSDXL", [
        ("clip", "CLIP", {}),
        ("width", "INT", {"default": 1024, "min": 0, "max": MAXRES}),
        ("height", "INT", {"default": 1024, "min": 0, "max": MAXRES}),
        ("crop_w", "INT", {"default": 0, "min": 0, "max": MAXRES}),
        ("crop_h", "INT", {"default": 0, "min": 0, "max": MAXRES}),
        ("target_width", "INT", {"default": 1024, "min": 0, "max": MAXRES}),
        ("target_height", "INT", {"default": 1024, "min": 0, "max": MAXRES}),
        ("text_g", "STRING", {"multiline": True}),
        ("text_l", "STRING", {"multiline": True})], ["CONDITIONING"]),
    "CLIPTextEncodeSDXLRefiner": ("CLIPTextEncodeSDXLRefiner", [
        ("ascore", "FLOAT", {"default": 6.0, "min": 0.0, "max": 1000.0, "step": 0.01}),
        ("width", "INT", {"default": 1024, "min": 0, "max": MAXRES}),
        ("height", "INT", {"default": 1024, "min": 0, "max": MAXRES}),
        ("text", "STRING", {"multiline": True}),
        ("clip", "CLIP", {})], ["CONDITIONING"]),
    "EmptyLatentImage": ("Empty Latent Image", [
        ("width", "INT", {"default": 512, "min": 16, "max": MAXRES, "step": 8}),
        ("height", "INT", {"default": 512, "min": 16, "max": MAXRES, "step": 8}),
        ("batch_size", "INT", {"default": 1, "min": 1, "max": 4096})], ["LATENT"]),
    "KSampler": ("KSampler", [
        ("model", "MODEL", {}),
        ("seed", "INT", {"default": 0, "min": 0, "max": BIG, "control_after_generate": True}),
        ("steps", "INT", {"default": 20, "min": 1, "max": 10000}),
        ("cfg", "FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
        ("sampler_name", COMBO, {}), ("scheduler", COMBO, {}),
        ("positive", "CONDITIONING", {}), ("negative", "CONDITIONING", {}), ("latent_image", "LATENT", {}),
        ("denoise", "FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01})], ["LATENT"]),
    "KSamplerAdvanced": ("KSampler (Advanced)", [
        ("model", "MODEL", {}),
        ("add_noise", ["enable", "disable"], {}),
        ("noise_seed", "INT", {"default": 0, "min": 0, "max": BIG, "control_after_generate": True}),
        ("steps", "INT", {"default": 20, "min": 1, "max": 10000}),
        ("cfg", "FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
        ("sampler_name", COMBO, {}), ("scheduler", COMBO, {}),
        ("positive", "CONDITIONING", {}), ("negative", "CONDITIONING", {}), ("latent_image", "LATENT", {}),
        ("start_at_step", "INT", {"default": 0, "min": 0, "max": 10000}),
        ("end_at_step", "INT", {"default": 10000, "min": 0, "max": 10000}),
        ("return_with_leftover_noise", ["disable", "enable"], {})], ["LATENT"]),
    "VAEDecode": ("VAE Decode", [("samples", "LATENT", {}), ("vae", "VAE", {})], ["IMAGE"]),
    "VAEEncode": ("VAE Encode", [("pixels", "IMAGE", {}), ("vae", "VAE", {})], ["LATENT"]),
    "VAEEncodeForInpaint": ("VAE Encode (for Inpainting)", [
        ("pixels", "IMAGE", {}), ("vae", "VAE", {}), ("mask", "MASK", {}),
        ("grow_mask_by", "INT", {"default": 6, "min": 0, "max": 64, "step": 1})], ["LATENT"]),
    "LatentUpscale": ("Upscale Latent", [
        ("samples", "LATENT", {}),
        ("upscale_method", ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"], {}),
        ("width", "INT", {"default": 512, "min": 0, "max": MAXRES, "step": 8}),
        ("height", "INT", {"default": 512, "min": 0, "max": MAXRES, "step": 8}),
        ("crop", ["disabled", "center"], {})], ["LATENT"]),
    "ConditioningCombine": (None, [("conditioning_1", "CONDITIONING", {}), ("conditioning_2", "CONDITIONING", {})],
                            ["CONDITIONING"]),
    "ConditioningConcat": (None, [("conditioning_to", "CONDITIONING", {}), ("conditioning_from", "CONDITIONING", {})],
                           ["CONDITIONING"]),
    "ConditioningZeroOut": (None, [("conditioning", "CONDITIONING", {})], ["CONDITIONING"]),
    "ConditioningSetTimestepRange": (None, [
        ("conditioning", "CONDITIONING", {}),
        ("start", "FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}),
        ("end", "FLOAT", {"default": 1.0})], ["CONDITIONING"]),
    "SaveImage": ("Save Image", [("images", "IMAGE", {}), ("filename_prefix", "STRING", {"default": "ComfyUI"})], []),
    "PreviewImage": (None, [("images", "IMAGE", {})], []),
    "LoadImage": ("Load Image", [("image", COMBO, {"image_upload": True})], ["IMAGE", "MASK"]),
    # issue 18: ComfyUI's core image, latent, mask, conditioning and upscale-model nodes
    "ImageBlend": ("Blend Images", [
        ("image1", "IMAGE", {}), ("image2", "IMAGE", {}),
        ("blend_factor", "FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01}),
        ("blend_mode", ["normal", "multiply", "screen", "overlay", "soft_light", "difference"], {})], ["IMAGE"]),
    "ImagePadForOutpaint": ("Pad Image for Outpainting", [("image", "IMAGE", {})] + [
        (side, "INT", {"default": 0, "min": 0, "max": MAXRES, "step": 8}) for side in ("left", "top", "right", "bottom")]
        + [("feathering", "INT", {"default": 40, "min": 0, "max": MAXRES, "step": 1})], ["IMAGE", "MASK"]),
    "ImageScaleToTotalPixels": ("Scale Image to Total Pixels", [
        ("image", "IMAGE", {}), ("upscale_method", ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"], {}),
        ("megapixels", "FLOAT", {"default": 1.0, "min": 0.01, "max": 16.0, "step": 0.01}),
        ("resolution_steps", "INT", {"default": 1, "min": 1, "max": 256})], ["IMAGE"]),
    "ImageBatch": (None, [("image1", "IMAGE", {}), ("image2", "IMAGE", {})], ["IMAGE"]),
    "LatentComposite": ("Latent Composite", [("samples_to", "LATENT", {}), ("samples_from", "LATENT", {})] + [
        (name, "INT", {"default": 0, "min": 0, "max": MAXRES, "step": 8}) for name in ("x", "y", "feather")],
        ["LATENT"]),
    "LatentCompositeMasked": ("Latent Composite Masked", [("destination", "LATENT", {}), ("source", "LATENT", {})] + [
        (name, "INT", {"default": 0, "min": 0, "max": MAXRES, "step": 8}) for name in ("x", "y")] + [
        ("resize_source", "BOOLEAN", {"default": False}), ("mask", "MASK", {})], ["LATENT"]),
    "SetLatentNoiseMask": ("Set Latent Noise Mask", [("samples", "LATENT", {}), ("mask", "MASK", {})], ["LATENT"]),
    "RepeatLatentBatch": ("Repeat Latent Batch", [("samples", "LATENT", {}),
                                                  ("amount", "INT", {"default": 1, "min": 1, "max": 64})], ["LATENT"]),
    "LatentFromBatch": (None, [("samples", "LATENT", {}), ("batch_index", "INT", {"default": 0, "min": 0, "max": 63}),
                               ("length", "INT", {"default": 1, "min": 1, "max": 64})], ["LATENT"]),
    "LatentBlend": ("Latent Blend", [("samples1", "LATENT", {}), ("samples2", "LATENT", {}),
                                     ("blend_factor", "FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01})],
                    ["LATENT"]),
    "LoadImageMask": ("Load Image (as Mask)", [("image", COMBO, {"image_upload": True}),
                                               ("channel", ["alpha", "red", "green", "blue"], {})], ["MASK"]),
    "MaskPreview": ("Preview Mask", [("mask", "MASK", {})], []),
    "ImageToMask": ("Convert Image to Mask", [("image", "IMAGE", {}), ("channel", ["red", "green", "blue", "alpha"], {})],
                    ["MASK"]),
    "MaskToImage": ("Convert Mask to Image", [("mask", "MASK", {})], ["IMAGE"]),
    "InvertMask": ("Invert Mask", [("mask", "MASK", {})], ["MASK"]),
    "GrowMask": ("Grow Mask", [("mask", "MASK", {}),
                               ("expand", "INT", {"default": 0, "min": -MAXRES, "max": MAXRES, "step": 1}),
                               ("tapered_corners", "BOOLEAN", {"default": True})], ["MASK"]),
    "FeatherMask": ("Feather Mask", [("mask", "MASK", {})] + [
        (side, "INT", {"default": 0, "min": 0, "max": MAXRES, "step": 1}) for side in ("left", "top", "right", "bottom")],
        ["MASK"]),
    "ThresholdMask": ("Threshold Mask", [("mask", "MASK", {}),
                                         ("value", "FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01})],
                      ["MASK"]),
    "ConditioningAverage": ("Conditioning (Average)", [
        ("conditioning_to", "CONDITIONING", {}), ("conditioning_from", "CONDITIONING", {}),
        ("conditioning_to_strength", "FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01})],
        ["CONDITIONING"]),
    "UpscaleModelLoader": ("Load Upscale Model", [("model_name", COMBO, {})], ["UPSCALE_MODEL"]),
    "TripleCLIPLoader": ("TripleCLIPLoader", [(f"clip_name{i}", COMBO, {}) for i in (1, 2, 3)], ["CLIP"]),
    "DualCLIPLoader": ("DualCLIPLoader", [("clip_name1", COMBO, {}), ("clip_name2", COMBO, {}), ("type", COMBO, {}),
                                          ("device", ["default", "cpu"], {})], ["CLIP"]),
    "CLIPLoader": ("Load CLIP", [("clip_name", COMBO, {}), ("type", COMBO, {}), ("device", ["default", "cpu"], {})],
                   ["CLIP"]),
    "CLIPTextEncodeSD3": ("CLIPTextEncodeSD3", [("clip", "CLIP", {})] + [
        (name, "STRING", {"multiline": True, "dynamicPrompts": True}) for name in ("clip_l", "clip_g", "t5xxl")] + [
        ("empty_padding", ["none", "empty_prompt"], {})], ["CONDITIONING"]),
    "ImageUpscaleWithModel": ("Upscale Image (using Model)", [("upscale_model", "UPSCALE_MODEL", {}),
                                                              ("image", "IMAGE", {})], ["IMAGE"]),
    "ConditioningSetArea": ("Conditioning (Set Area)", [("conditioning", "CONDITIONING", {})] + [
        (name, "INT", {"default": default, "min": low, "max": MAXRES, "step": 8})
        for name, default, low in (("width", 64, 64), ("height", 64, 64), ("x", 0, 0), ("y", 0, 0))] + [
        ("strength", "FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01})], ["CONDITIONING"]),
    "ConditioningSetAreaPercentage": ("Conditioning (Set Area with Percentage)", [
        ("conditioning", "CONDITIONING", {})] + [
        (name, "FLOAT", {"default": default, "min": 0.0, "max": 1.0, "step": 0.01})
        for name, default in (("width", 1.0), ("height", 1.0), ("x", 0.0), ("y", 0.0))] + [
        ("strength", "FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01})], ["CONDITIONING"]),
    "ConditioningSetAreaStrength": (None, [("conditioning", "CONDITIONING", {}), (
        "strength", "FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01})], ["CONDITIONING"]),
    "ConditioningSetMask": ("Conditioning (Set Mask)", [
        ("conditioning", "CONDITIONING", {}), ("mask", "MASK", {}),
        ("strength", "FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}),
        ("set_cond_area", ["default", "mask bounds"], {})], ["CONDITIONING"]),
    "ControlNetLoader": ("Load ControlNet Model", [("control_net_name", COMBO, {})], ["CONTROL_NET"]),
    "DiffControlNetLoader": ("Load ControlNet Model (diff)", [("model", "MODEL", {}), ("control_net_name", COMBO, {})],
                             ["CONTROL_NET"]),
    "ControlNetApply": ("Apply ControlNet (OLD)", [
        ("conditioning", "CONDITIONING", {}), ("control_net", "CONTROL_NET", {}), ("image", "IMAGE", {}),
        ("strength", "FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01})], ["CONDITIONING"]),
    "ControlNetApplyAdvanced": ("Apply ControlNet", [
        ("positive", "CONDITIONING", {}), ("negative", "CONDITIONING", {}), ("control_net", "CONTROL_NET", {}),
        ("image", "IMAGE", {}), ("strength", "FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}),
        ("start_percent", "FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}),
        ("end_percent", "FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001}), ("vae", "VAE", {})],
        ["CONDITIONING", "CONDITIONING"]),
    "Canny": ("Canny", [("image", "IMAGE", {}),
                        ("low_threshold", "FLOAT", {"default": 0.4, "min": 0.01, "max": 0.99, "step": 0.01}),
                        ("high_threshold", "FLOAT", {"default": 0.8, "min": 0.01, "max": 0.99, "step": 0.01})],
              ["IMAGE"]),
    "CLIPVisionLoader": ("Load CLIP Vision", [("clip_name", COMBO, {})], ["CLIP_VISION"]),
    "CLIPVisionEncode": ("CLIP Vision Encode", [("clip_vision", "CLIP_VISION", {}), ("image", "IMAGE", {}),
                                                ("crop", ["center", "none"], {})], ["CLIP_VISION_OUTPUT"]),
    "unCLIPConditioning": ("unCLIPConditioning", [
        ("conditioning", "CONDITIONING", {}), ("clip_vision_output", "CLIP_VISION_OUTPUT", {}),
        ("strength", "FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}),
        ("noise_augmentation", "FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01})], ["CONDITIONING"]),
}
OPTIONAL = {("LatentCompositeMasked", "mask"), ("ControlNetApplyAdvanced", "vae"), ("CLIPLoader", "device"),
            ("DualCLIPLoader", "device")}  # ComfyUI declares these optional

# comfyui-compat.md §13, in ComfyUI's order
COMFY_SAMPLERS = ("euler euler_cfg_pp euler_ancestral euler_ancestral_cfg_pp heun heunpp2 dpm_2 dpm_2_ancestral lms "
                  "dpm_fast dpm_adaptive dpmpp_2s_ancestral dpmpp_2s_ancestral_cfg_pp dpmpp_sde dpmpp_sde_gpu dpmpp_2m "
                  "dpmpp_2m_cfg_pp dpmpp_2m_sde dpmpp_2m_sde_gpu dpmpp_2m_sde_heun dpmpp_2m_sde_heun_gpu dpmpp_3m_sde "
                  "dpmpp_3m_sde_gpu ddpm lcm ipndm ipndm_v deis res_multistep res_multistep_cfg_pp "
                  "res_multistep_ancestral res_multistep_ancestral_cfg_pp gradient_estimation "
                  "gradient_estimation_cfg_pp er_sde seeds_2 seeds_3 sa_solver sa_solver_pece ddim uni_pc "
                  "uni_pc_bh2").split()
COMFY_SCHEDULERS = "simple sgm_uniform karras exponential ddim_uniform beta normal linear_quadratic kl_optimal".split()


@pytest.fixture(scope="module")
def object_info(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    (models / "checkpoints" / "sub").mkdir(parents=True)
    (models / "checkpoints" / "sub" / "a.safetensors").write_bytes(b"")
    (models / "checkpoints" / "folder" / "unet").mkdir(parents=True)
    (models / "checkpoints" / "folder" / "model_index.json").write_text("{}")
    (models / "vae").mkdir()
    (models / "vae" / "v.safetensors").write_bytes(b"")
    for folder, name in (("clip", "sub/clip_g.safetensors"), ("text_encoders", "t5xxl_fp16.safetensors"),
                         ("unet", "sdxl_unet.safetensors"), ("diffusion_models", "sd3_medium.safetensors"),
                         ("diffusion_models", "sd3_diffusers/transformer/config.json")):
        (models / folder / name).parent.mkdir(parents=True, exist_ok=True)
        (models / folder / name).write_bytes(b"")
    rc, out, err = cli("nodes", "--json", "--models", str(models))
    assert rc == 0, err
    return json.loads(out)


def _inputs(entry):
    req, opt = entry["input"]["required"], entry["input"].get("optional", {})
    return [(name, req[name]) for name in entry["input_order"]["required"]] + \
           [(name, opt[name]) for name in entry["input_order"].get("optional", [])]


def check_reference(object_info, class_type):
    display, expected, outputs = REFERENCE[class_type]
    entry = object_info[class_type]
    assert {name for name in entry["input"].get("optional", {})} == {n for c, n in OPTIONAL if c == class_type}
    got = _inputs(entry)
    assert [name for name, _ in got] == [name for name, _, _ in expected], f"{class_type}: input names / order"
    for (name, spec), (_, kind, options) in zip(got, expected):
        head, opts = spec[0], (spec[1] if len(spec) > 1 else {})
        if kind == COMBO:
            assert isinstance(head, list), f"{class_type}.{name}"
        elif isinstance(kind, list):
            assert head == kind, f"{class_type}.{name}"
        else:
            assert head == kind, f"{class_type}.{name}"
        for key, value in options.items():
            assert opts.get(key) == value, f"{class_type}.{name} {key}"
    assert entry["output"] == outputs
    if display is not None:
        assert entry["display_name"] == display
    assert entry["name"] == class_type and entry["category"]


def test_text_encoder_loaders_list_both_folders_and_the_sd3_type(object_info):
    """ComfyUI's text_encoders folder and its older name clip, merged; SD3's encoders as CLIPLoader's type sd3."""
    files = ["sub/clip_g.safetensors", "t5xxl_fp16.safetensors"]
    for node, inputs in (("TripleCLIPLoader", ("clip_name1", "clip_name2", "clip_name3")),
                         ("DualCLIPLoader", ("clip_name1", "clip_name2")), ("CLIPLoader", ("clip_name",))):
        for name in inputs:
            assert object_info[node]["input"]["required"][name][0] == files, f"{node}.{name}"
    for node in ("CLIPLoader", "DualCLIPLoader"):
        assert "sd3" in object_info[node]["input"]["required"]["type"][0]


@pytest.mark.parametrize("class_type", sorted(REFERENCE))
def test_comfy_node_matches_reference(object_info, class_type):
    check_reference(object_info, class_type)


async def test_http_object_info_matches_reference(aiohttp_client, tmp_path):
    """The same schemas over GET /object_info, as API clients and the canvas read them."""
    from server_helpers import make_config

    from server.app import create_app

    client = await aiohttp_client(create_app(make_config(tmp_path)))
    info = await (await client.get("/object_info")).json()
    for class_type in REFERENCE:
        check_reference(info, class_type)


def test_sampler_and_scheduler_choices_follow_comfyui(object_info):
    for class_type in ("KSampler", "KSamplerAdvanced", "SDXLSampler", "SDXLRefinerSampler", "KSamplerSelect",
                       "BasicScheduler"):
        req = object_info[class_type]["input"]["required"]
        if "sampler_name" in req:
            assert req["sampler_name"][0] == SAMPLER_NAMES
        if "scheduler" in req:
            assert req["scheduler"][0] == SCHEDULER_NAMES
    assert object_info["SamplerCustom"]["output_name"] == ["output", "denoised_output"]
    assert object_info["SplitSigmas"]["output_name"] == ["high_sigmas", "low_sigmas"]
    # only implemented names are advertised, in ComfyUI's relative order
    assert SAMPLER_NAMES == [s for s in COMFY_SAMPLERS if s in SAMPLER_NAMES]
    assert SCHEDULER_NAMES == [s for s in COMFY_SCHEDULERS if s in SCHEDULER_NAMES]


def test_model_combos_list_files_and_diffusers_folders(object_info):
    assert object_info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == ["folder", "sub/a.safetensors"]
    assert object_info["SDXLCheckpointLoader"]["input"]["required"]["ckpt_name"][0] == ["folder", "sub/a.safetensors"]
    assert object_info["VAELoader"]["input"]["required"]["vae_name"][0] == ["v.safetensors"]
    # diffusion_models and ComfyUI's older name unet, merged; a diffusers folder holding a transformer/ is one model
    assert object_info["UNETLoader"]["input"]["required"]["unet_name"][0] == [
        "sd3_diffusers", "sd3_medium.safetensors", "sdxl_unet.safetensors"]


def test_every_node_is_listed_with_category_inputs_and_outputs(object_info):
    from nodes.node import load_builtin_nodes

    assert set(object_info) == set(load_builtin_nodes())
    for name, entry in object_info.items():
        assert entry["category"] and entry["display_name"], name
        assert set(entry["input_order"]["required"]) == set(entry["input"]["required"]), name
    fine = {n for n, e in object_info.items() if e["category"].startswith("sdxl/")}
    assert {"SDXLCheckpointLoader", "SDXLVAELoader", "SDXLClipLTextEncode", "SDXLBigGTextEncode",
            "SDXLDualEncoderConcat", "SDXLRefinerTextConditioning", "SDXLSizeConditioning", "SDXLAestheticScore",
            "SDXLEmptyLatent", "SDXLSampler", "SDXLRefinerSampler", "SDXLVAEDecode", "SDXLVAEEncode"} <= fine
    assert object_info["SDXLDualEncoderConcat"]["display_name"] == "SDXL Dual-Encoder Channel Concat"
    assert object_info["SDXLClipLTextEncode"]["output"] == ["CLIP_L_EMBEDS"]
    assert object_info["SDXLBigGTextEncode"]["output"] == ["CLIP_G_EMBEDS"]


def test_comfyui_widget_values_map_to_the_right_inputs():
    """The positional widgets_values ComfyUI saves (comfyui-compat.md §9.5) land on the same inputs here."""
    from nodes.node import load_builtin_nodes

    def one(kind, widgets):
        ui = {"nodes": [{"id": 1, "type": kind, "mode": 0, "inputs": [], "outputs": [],
                         "widgets_values": widgets}], "links": [], "version": 0.4}
        return ui_to_api(ui, load_builtin_nodes())["1"]["inputs"]

    assert one("KSampler", [812045847300606, "randomize", 25, 7, "dpmpp_2m", "karras", 1]) == {
        "seed": 812045847300606, "steps": 25, "cfg": 7, "sampler_name": "dpmpp_2m", "scheduler": "karras",
        "denoise": 1}
    assert one("KSamplerAdvanced", ["enable", 721897303308196, "randomize", 25, 8, "euler", "normal", 0, 20,
                                    "enable"]) == {
        "add_noise": "enable", "noise_seed": 721897303308196, "steps": 25, "cfg": 8, "sampler_name": "euler",
        "scheduler": "normal", "start_at_step": 0, "end_at_step": 20, "return_with_leftover_noise": "enable"}
    assert one("SamplerCustom", [True, 0, "fixed", 1]) == {"add_noise": True, "noise_seed": 0, "cfg": 1}
    assert one("SDTurboScheduler", [1, 1]) == {"steps": 1, "denoise": 1}
    assert one("BasicScheduler", ["simple", 20, 1]) == {"scheduler": "simple", "steps": 20, "denoise": 1}
    assert one("RandomNoise", [5, "randomize"]) == {"noise_seed": 5}
    assert one("ModelSamplingDiscrete", ["lcm", False]) == {"sampling": "lcm", "zsnr": False}
    assert one("CLIPSetLastLayer", [-2]) == {"stop_at_clip_layer": -2}
    assert one("UNETLoader", ["sd3_medium.safetensors", "fp8_e4m3fn"]) == {  # as ComfyUI's SD3 templates save it
        "unet_name": "sd3_medium.safetensors", "weight_dtype": "fp8_e4m3fn"}
    assert one("CLIPTextEncodeSDXL", [4096, 4096, 0, 0, 4096, 4096, "g", "l"]) == {
        "width": 4096, "height": 4096, "crop_w": 0, "crop_h": 0, "target_width": 4096, "target_height": 4096,
        "text_g": "g", "text_l": "l"}
