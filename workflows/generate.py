"""Writes the shipped model workflows (workflows/sdxl_*, sd15_*, sd2_*, sd3_*.json, UI format 0.4) from the node
declarations.

Run `python workflows/generate.py` after changing a node's inputs; the JSON files are what ships (the canvas
opens them, `latentgraph run` runs them). Widget values are laid out the way the canvas saves them
(server.graph.widget_slots: schema order, a seed's control value after it). Defaults are small (256², a few
steps) so the tiny demo checkpoints run in seconds on a CPU; with real checkpoints raise sizes and steps.
"""
from __future__ import annotations

import json
import os
import sys
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nodes.node import load_builtin_nodes  # noqa: E402
from server.graph import widget_slots  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
BASE, REFINER = "demo_sdxl_base.safetensors", "demo_sdxl_refiner.safetensors"
SD15, SD2_768V = "demo_sd15.safetensors", "demo_sd2_768v.safetensors"
SD3, SD3_INCL_CLIPS = "demo_sd3_medium.safetensors", "demo_sd3_medium_incl_clips_t5xxlfp8.safetensors"
SD3_TEXT = ("demo_clip_l.safetensors", "demo_clip_g.safetensors", "demo_t5xxl_fp8_e4m3fn.safetensors")
SD3_MMDIT, SD3_VAE = "demo_sd3_medium_mmdit.safetensors", "demo_sd3_vae.safetensors"
SDXL_LORA, LCM_LORA = "demo_sdxl_lora.safetensors", "demo_lcm_lora_sdxl.safetensors"
PROMPT = "a majestic lion jumping from a big stone at night, highly detailed"
NEGATIVE = "blurry, low quality"
REGISTRY = load_builtin_nodes()


class Workflow:
    def __init__(self, name: str):
        self.name = name
        self.nodes: list[dict] = []
        self.links: list[list] = []

    def _node(self, node_id: int) -> dict:
        return next(n for n in self.nodes if n["id"] == node_id)

    def _link(self, origin: int, slot: int, target: dict, target_slot: int, kind: str) -> int:
        link_id = len(self.links) + 1
        self.links.append([link_id, origin, slot, target["id"], target_slot, kind])
        self._node(origin)["outputs"][slot]["links"].append(link_id)
        return link_id

    def add(self, kind: str, pos, title: str | None = None, **values) -> int:
        """A node; keyword values are widget constants, or (node_id, output_slot) tuples for links."""
        spec = REGISTRY[kind]
        node = {"id": len(self.nodes) + 1, "type": kind, "pos": list(pos), "size": [320, 60 + 26 * len(spec.inputs)],
                "flags": {}, "order": len(self.nodes), "mode": 0, "inputs": [],
                "outputs": [{"name": o.label, "type": o.type.name, "links": [], "slot_index": i}
                            for i, o in enumerate(spec.outputs)],
                "properties": {"Node name for S&R": kind, "ver": spec.version}}
        if title:
            node["title"] = title
        self.nodes.append(node)
        slots = widget_slots(spec)
        widgets: list = [None] * (max(slots.values(), default=-1) + 2)
        for name, inp in spec.inputs.items():
            value = values.pop(name, None)
            linked = isinstance(value, tuple)
            if inp.is_widget:
                const = value if value is not None and not linked else (inp.default if inp.has_default else inp.options()[0])
                widgets[slots[name]] = const
                if inp.control_after_generate:
                    widgets[slots[name] + 1] = "fixed"
            if linked or not inp.is_widget:
                entry = {"name": name, "type": inp.type.name, "link": None}
                if inp.is_widget:
                    entry["widget"] = {"name": name}
                node["inputs"].append(entry)
                if linked:
                    entry["link"] = self._link(value[0], value[1], node, len(node["inputs"]) - 1, inp.type.name)
        if values:
            raise KeyError(f"{kind} has no inputs {sorted(values)}")
        node["widgets_values"] = widgets[: len(widgets) - 1] if widgets and widgets[-1] is None else widgets
        return node["id"]

    def primitive(self, value, kind: str, pos, title: str, targets: list[tuple[int, str]]) -> int:
        """A PrimitiveNode feeding the widget `name` of each target (converted to an input)."""
        node = {"id": len(self.nodes) + 1, "type": "PrimitiveNode", "pos": list(pos), "size": [300, 80], "flags": {},
                "order": len(self.nodes), "mode": 0, "inputs": [], "title": title,
                "outputs": [{"name": kind, "type": kind, "links": [], "slot_index": 0,
                             "widget": {"name": targets[0][1]}}],
                "properties": {"Run widget replace on values": False},
                "widgets_values": [value, "fixed"] if kind == "INT" else [value]}
        self.nodes.append(node)
        for target_id, name in targets:
            target = self._node(target_id)
            entry = next((e for e in target["inputs"] if e["name"] == name), None)
            if entry is None:
                entry = {"name": name, "type": kind, "link": None, "widget": {"name": name}}
                target["inputs"].append(entry)
            entry["link"] = self._link(node["id"], 0, target, target["inputs"].index(entry), kind)
        return node["id"]

    def note(self, text: str, pos, size=(520, 200)) -> None:
        self.nodes.append({"id": len(self.nodes) + 1, "type": "Note", "pos": list(pos), "size": list(size),
                           "flags": {}, "order": len(self.nodes), "mode": 0, "inputs": [], "outputs": [],
                           "properties": {}, "widgets_values": [text], "color": "#432", "bgcolor": "#653"})

    def save(self) -> str:
        data = {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"latentgraph/workflows/{self.name}")), "revision": 0,
                "last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                "links": self.links, "groups": [], "config": {},
                "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4}
        path = os.path.join(HERE, f"{self.name}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, ensure_ascii=False)
            f.write("\n")
        return path


RUN = ("Run headless: latentgraph run workflows/{name}.json. It names the demo checkpoints (latentgraph serve installs "
       "them, or latentgraph make-demo-model models/checkpoints); they make noise, not pictures: pick your {family} "
       "checkpoints in the loaders for real images.")


def base_fine_grained() -> Workflow:
    # laid out in four columns, output last and below the sampler, so the canvas's first view shows it whole
    w = Workflow("sdxl_base")
    ckpt = w.add("SDXLCheckpointLoader", (0, 0), ckpt_name=BASE)
    latent = w.add("SDXLEmptyLatent", (0, 150), resolution="custom", width=256, height=256)
    conds = []
    for i, (label, text) in enumerate((("positive", PROMPT), ("negative", NEGATIVE))):
        y = 400 * i
        clip_l = w.add("SDXLClipLTextEncode", (360, y), f"CLIP-L ({label})", clip=(ckpt, 1), text=text)
        clip_g = w.add("SDXLBigGTextEncode", (360, y + 180), f"OpenCLIP bigG ({label})", clip=(ckpt, 1), text=text)
        concat = w.add("SDXLDualEncoderConcat", (720, y), clip_l=(clip_l, 0), clip_g=(clip_g, 0))
        conds.append(w.add("SDXLSizeConditioning", (720, y + 150), f"Size & crop ({label})", conditioning=(concat, 0),
                           original_width=(latent, 1), original_height=(latent, 2),
                           target_width=(latent, 1), target_height=(latent, 2)))
    sampled = w.add("SDXLSampler", (1080, 0), model=(ckpt, 0), positive=(conds[0], 0), negative=(conds[1], 0),
                    latent_image=(latent, 0), seed=42, steps=4, cfg=5.0)
    image = w.add("SDXLVAEDecode", (1080, 480), samples=(sampled, 0), vae=(ckpt, 2))
    w.add("SaveImage", (1080, 710), images=(image, 0), filename_prefix="sdxl_base")
    w.note("SDXL base text-to-image with the pipeline's parts as nodes (SDXL report §2): CLIP-L and OpenCLIP bigG "
           "encode the prompt separately; their penultimate hidden states are joined on the CHANNEL axis "
           "(768 + 1280 = 2048 per token) and bigG's pooled vector goes with them; the size & crop conditioning "
           "(original = target = output size, crop 0,0, as at inference in the paper) is embedded into the UNet's "
           "vector input. Same prompt and seed as sdxl_base_comfy.json, which gives the identical image with "
           "ComfyUI's nodes.\n" + RUN.format(name=w.name, family="SDXL"), (0, 400), (320, 360))
    return w


def base_comfy() -> Workflow:
    w = Workflow("sdxl_base_comfy")
    ckpt = w.add("CheckpointLoaderSimple", (0, 200), ckpt_name=BASE)
    pos = w.add("CLIPTextEncode", (380, 40), "Positive", text=PROMPT, clip=(ckpt, 1))
    neg = w.add("CLIPTextEncode", (380, 300), "Negative", text=NEGATIVE, clip=(ckpt, 1))
    latent = w.add("EmptyLatentImage", (380, 560), width=256, height=256, batch_size=1)
    sampled = w.add("KSampler", (760, 200), model=(ckpt, 0), seed=42, steps=4, cfg=5.0, sampler_name="euler",
                    scheduler="normal", positive=(pos, 0), negative=(neg, 0), latent_image=(latent, 0), denoise=1.0)
    image = w.add("VAEDecode", (1120, 200), samples=(sampled, 0), vae=(ckpt, 2))
    w.add("SaveImage", (1420, 200), images=(image, 0), filename_prefix="sdxl_base_comfy")
    w.note("SDXL base text-to-image with ComfyUI's nodes (same names, inputs and widget order, so this file also "
           "opens in ComfyUI). CLIPTextEncode on an SDXL base CLIP runs both text encoders; the size conditioning "
           "comes from the latent's size. Same prompt and seed as sdxl_base.json: identical pixels.\n"
           + RUN.format(name=w.name, family="SDXL"), (0, 760))
    return w


def base_refiner() -> Workflow:
    """comfyui-compat.md §12: two KSamplerAdvanced on one schedule; the base stops early keeping its noise."""
    w = Workflow("sdxl_base_refiner")
    base = w.add("CheckpointLoaderSimple", (0, 100), "Load base", ckpt_name=BASE)
    refiner = w.add("CheckpointLoaderSimple", (0, 600), "Load refiner", ckpt_name=REFINER)
    latent = w.add("EmptyLatentImage", (0, 350), width=256, height=256, batch_size=1)
    texts = {}
    for name, clip, y in (("base", base, 0), ("refiner", refiner, 520)):
        texts[name] = (w.add("CLIPTextEncode", (380, y), f"Positive ({name})", text=PROMPT, clip=(clip, 1)),
                       w.add("CLIPTextEncode", (380, y + 240), f"Negative ({name})", text=NEGATIVE, clip=(clip, 1)))
    first = w.add("KSamplerAdvanced", (760, 100), "Base (steps 0 → switch, keeps its noise)", model=(base, 0),
                  add_noise="enable", noise_seed=42, steps=6, cfg=8.0, sampler_name="euler", scheduler="normal",
                  positive=(texts["base"][0], 0), negative=(texts["base"][1], 0), latent_image=(latent, 0),
                  start_at_step=0, end_at_step=4, return_with_leftover_noise="enable")
    second = w.add("KSamplerAdvanced", (1140, 100), "Refiner (switch → end, adds no noise)", model=(refiner, 0),
                   add_noise="disable", noise_seed=42, steps=6, cfg=8.0, sampler_name="euler", scheduler="normal",
                   positive=(texts["refiner"][0], 0), negative=(texts["refiner"][1], 0), latent_image=(first, 0),
                   start_at_step=4, end_at_step=10000, return_with_leftover_noise="disable")
    image = w.add("VAEDecode", (1520, 100), samples=(second, 0), vae=(refiner, 2))
    w.add("SaveImage", (1820, 100), images=(image, 0), filename_prefix="sdxl_base_refiner")
    w.primitive(6, "INT", (760, 640), "steps", [(first, "steps"), (second, "steps")])
    w.primitive(4, "INT", (760, 780), "switch to the refiner at step", [(first, "end_at_step"), (second, "start_at_step")])
    w.note("SDXL ensemble of experts (SDXL report §2.5; ComfyUI's official base + refiner wiring): both samplers share "
           "one schedule (steps, scheduler). The base runs steps 0 → switch and returns its latent still noisy "
           "(leftover noise); the refiner, specialised on low noise levels, runs switch → end without adding noise. "
           "The two primitives keep steps and the switch step in one place. With 6 euler/normal steps the switch at "
           "step 4 hands over at σ 0.57 (timestep ≈ 200), the top of the refiner's 200 noise levels; the official "
           "example uses 25 steps and switches at 20 (σ 0.49).\n"
           + RUN.format(name=w.name, family="SDXL"), (0, 900))
    return w


def refiner_sdedit() -> Workflow:
    w = Workflow("sdxl_refiner_sdedit")
    base = w.add("SDXLCheckpointLoader", (0, 100), "Load base", ckpt_name=BASE)
    refiner = w.add("SDXLCheckpointLoader", (0, 700), "Load refiner", ckpt_name=REFINER)
    latent = w.add("SDXLEmptyLatent", (0, 350), resolution="custom", width=256, height=256)
    base_conds, refiner_conds = [], []
    for i, (label, text, score) in enumerate((("positive", PROMPT, 6.0), ("negative", NEGATIVE, 2.5))):
        y = 220 * i
        clip_l = w.add("SDXLClipLTextEncode", (380, y), f"CLIP-L ({label})", clip=(base, 1), text=text)
        clip_g = w.add("SDXLBigGTextEncode", (380, y + 440), f"bigG ({label}, base)", clip=(base, 1), text=text)
        base_conds.append(w.add("SDXLDualEncoderConcat", (760, y), clip_l=(clip_l, 0), clip_g=(clip_g, 0)))
        ref_g = w.add("SDXLBigGTextEncode", (380, y + 900), f"bigG ({label}, refiner)", clip=(refiner, 1), text=text)
        ref_text = w.add("SDXLRefinerTextConditioning", (760, y + 900), clip_g=(ref_g, 0))
        refiner_conds.append(w.add("SDXLAestheticScore", (1080, y + 900), f"Aesthetic score ({label})",
                                   conditioning=(ref_text, 0), aesthetic_score=score))
    sampled = w.add("SDXLSampler", (1140, 100), "Base: full text-to-image", model=(base, 0),
                    positive=(base_conds[0], 0), negative=(base_conds[1], 0), latent_image=(latent, 0),
                    seed=42, steps=4, cfg=5.0)
    base_image = w.add("SDXLVAEDecode", (1520, 0), samples=(sampled, 0), vae=(base, 2))
    w.add("SaveImage", (1840, 0), "Base image", images=(base_image, 0), filename_prefix="sdxl_sdedit_base")
    refined = w.add("SDXLRefinerSampler", (1520, 500), "Refiner: SDEdit", model=(refiner, 0),
                    positive=(refiner_conds[0], 0), negative=(refiner_conds[1], 0), latent_image=(sampled, 0),
                    seed=43, steps=3, cfg=5.0, mode="sdedit", strength=0.3)
    image = w.add("SDXLVAEDecode", (1840, 500), samples=(refined, 0), vae=(refiner, 2))
    w.add("SaveImage", (2160, 500), "Refined image", images=(image, 0), filename_prefix="sdxl_sdedit_refined")
    w.note("The SDXL report's refinement (§2.5): the base finishes the image; the refiner — trained on the first 200 "
           "noise levels only — noises the base latent again to a level inside that range (strength 0.3 → "
           "timestep 59) and denoises it with the same prompt (SDEdit). The refiner sees bigG's context alone "
           "(1280 wide) plus an aesthetic score: 6.0 for the positive prompt, 2.5 for the negative. Both the base "
           "and the refined image are saved.\n" + RUN.format(name=w.name, family="SDXL"), (0, 1400))
    return w


def _source_image(w: Workflow, ckpt: int, seed: int) -> int:
    """A base text-to-image picture made inside the workflow, so it runs with nothing in the input folder."""
    pos = w.add("CLIPTextEncode", (380, 0), "Source prompt", text="a red barn in a green field, blue sky", clip=(ckpt, 1))
    neg = w.add("CLIPTextEncode", (380, 260), "Negative", text=NEGATIVE, clip=(ckpt, 1))
    latent = w.add("EmptyLatentImage", (0, 400), width=256, height=256, batch_size=1)
    sampled = w.add("KSampler", (760, 0), "Make the source picture", model=(ckpt, 0), seed=seed, steps=4, cfg=5.0,
                    sampler_name="euler", scheduler="normal", positive=(pos, 0), negative=(neg, 0),
                    latent_image=(latent, 0))
    image = w.add("VAEDecode", (1120, 0), samples=(sampled, 0), vae=(ckpt, 2))
    w.add("SaveImage", (1420, 0), "Source image", images=(image, 0), filename_prefix=f"{w.name}_source")
    return image


def _img2img(name: str, ckpt_name: str, cfg: float, family: str, about: str) -> Workflow:
    w = Workflow(name)
    ckpt = w.add("CheckpointLoaderSimple", (0, 200), ckpt_name=ckpt_name)
    source = _source_image(w, ckpt, seed=7)
    pos = w.add("CLIPTextEncode", (380, 560), "New prompt", text="a red barn in a snowy field at dusk", clip=(ckpt, 1))
    neg = w.add("CLIPTextEncode", (380, 820), "Negative", text=NEGATIVE, clip=(ckpt, 1))
    encoded = w.add("VAEEncode", (1120, 400), pixels=(source, 0), vae=(ckpt, 2))
    sampled = w.add("KSampler", (1420, 560), "img2img (denoise 0.6)", model=(ckpt, 0), seed=42, steps=4, cfg=cfg,
                    sampler_name="euler", scheduler="normal", positive=(pos, 0), negative=(neg, 0),
                    latent_image=(encoded, 0), denoise=0.6)
    image = w.add("VAEDecode", (1780, 560), samples=(sampled, 0), vae=(ckpt, 2))
    w.add("SaveImage", (2080, 560), images=(image, 0), filename_prefix=name)
    w.note(about + "\n" + RUN.format(name=w.name, family=family), (0, 1100))
    return w


def img2img() -> Workflow:
    return _img2img("sdxl_img2img", BASE, 5.0, "SDXL", (
        "Image-to-image: a picture is encoded by the VAE, noised part of the way (denoise 0.6 runs the last 60 % of "
        "the schedule) and denoised with a new prompt. The source picture is made by the first row so the workflow "
        "needs no input file; to start from your own picture, replace the first row with Load Image feeding VAE "
        "Encode."))


def inpaint() -> Workflow:
    w = Workflow("sdxl_inpaint")
    ckpt = w.add("CheckpointLoaderSimple", (0, 200), ckpt_name=BASE)
    source = _source_image(w, ckpt, seed=7)
    blank = w.add("SolidMask", (0, 600), "No mask", value=0.0, width=256, height=256)
    square = w.add("SolidMask", (0, 780), "Area to repaint", value=1.0, width=96, height=96)
    mask = w.add("MaskComposite", (380, 640), "Mask: 96² square at (80, 80)", destination=(blank, 0),
                 source=(square, 0), x=80, y=80, operation="add")
    pos = w.add("CLIPTextEncode", (380, 900), "What to paint there", text="a white horse", clip=(ckpt, 1))
    neg = w.add("CLIPTextEncode", (380, 1160), "Negative", text=NEGATIVE, clip=(ckpt, 1))
    encoded = w.add("VAEEncodeForInpaint", (760, 640), pixels=(source, 0), vae=(ckpt, 2), mask=(mask, 0),
                    grow_mask_by=6)
    sampled = w.add("KSampler", (1120, 640), "Inpaint", model=(ckpt, 0), seed=42, steps=4, cfg=5.0,
                    sampler_name="euler", scheduler="normal", positive=(pos, 0), negative=(neg, 0),
                    latent_image=(encoded, 0), denoise=1.0)
    image = w.add("VAEDecode", (1480, 640), samples=(sampled, 0), vae=(ckpt, 2))
    pasted = w.add("ImageCompositeMasked", (1780, 640), "Paste the repainted area only", destination=(source, 0),
                   source=(image, 0), x=0, y=0, resize_source=False, mask=(mask, 0))
    w.add("SaveImage", (2100, 640), images=(pasted, 0), filename_prefix="sdxl_inpaint")
    w.note("Inpainting: VAE Encode (for Inpainting) greys out the masked square before encoding and attaches the "
           "(grown) mask to the latent; the sampler repaints only the masked area and keeps the rest on the input "
           "latent at every step. The decoded result is pasted back through the mask, so pixels outside the mask "
           "are exactly the source picture's. The source picture is made in the first row (no input file needed); "
           "use Load Image (its mask comes from the alpha channel) for your own.\n"
           + RUN.format(name=w.name, family="SDXL"),
           (0, 1450))
    return w


def hires_upscale_model() -> Workflow:
    from nodes.upscale_models import DEMO_UPSCALER

    w = Workflow("sdxl_hires_upscale_model")
    ckpt = w.add("CheckpointLoaderSimple", (0, 200), ckpt_name=BASE)
    pos = w.add("CLIPTextEncode", (380, 40), "Positive", text=PROMPT, clip=(ckpt, 1))
    neg = w.add("CLIPTextEncode", (380, 300), "Negative", text=NEGATIVE, clip=(ckpt, 1))
    latent = w.add("EmptyLatentImage", (380, 560), width=128, height=128, batch_size=1)
    first = w.add("KSampler", (760, 200), "First pass (low resolution)", model=(ckpt, 0), seed=42, steps=4, cfg=5.0,
                  sampler_name="euler", scheduler="normal", positive=(pos, 0), negative=(neg, 0),
                  latent_image=(latent, 0), denoise=1.0)
    low = w.add("VAEDecode", (1120, 200), samples=(first, 0), vae=(ckpt, 2))
    w.add("SaveImage", (1420, 0), "First pass", images=(low, 0), filename_prefix=f"{w.name}_lowres")
    upscaler = w.add("UpscaleModelLoader", (760, 620), model_name=DEMO_UPSCALER)
    big = w.add("ImageUpscaleWithModel", (1120, 420), "Upscale ×4 with the model", upscale_model=(upscaler, 0),
                image=(low, 0))
    scaled = w.add("ImageScaleBy", (1420, 420), "Back down to ×2", image=(big, 0), upscale_method="area",
                   scale_by=0.5)
    encoded = w.add("VAEEncode", (1720, 420), pixels=(scaled, 0), vae=(ckpt, 2))
    second = w.add("KSampler", (2020, 200), "Second pass (denoise 0.5)", model=(ckpt, 0), seed=43, steps=4, cfg=5.0,
                   sampler_name="euler", scheduler="normal", positive=(pos, 0), negative=(neg, 0),
                   latent_image=(encoded, 0), denoise=0.5)
    image = w.add("VAEDecode", (2380, 200), samples=(second, 0), vae=(ckpt, 2))
    w.add("SaveImage", (2680, 200), images=(image, 0), filename_prefix=w.name)
    w.note("Hires fix with an upscale model: the first pass makes a small picture, an image upscale model (ESRGAN, "
           "Real-ESRGAN, SwinIR, HAT, DAT …, read by spandrel from <models>/upscale_models) enlarges it 4× in "
           "overlapping tiles, Upscale Image By brings it to 2×, and a second pass at denoise 0.5 redraws the "
           "details at the new size. The demo upscaler (demo_esrgan_4x.safetensors, written by latentgraph serve "
           "or make-demo-model) has random weights: pick a real one (e.g. RealESRGAN_x4plus, 4x-UltraSharp) and a "
           "1024² first pass for real pictures.\n" + RUN.format(name=w.name, family="SDXL"), (0, 900))
    return w


def outpaint() -> Workflow:
    w = Workflow("sdxl_outpaint")
    ckpt = w.add("CheckpointLoaderSimple", (0, 200), ckpt_name=BASE)
    source = _source_image(w, ckpt, seed=7)
    padded = w.add("ImagePadForOutpaint", (380, 600), "Grow 64 px left and right", image=(source, 0), left=64,
                   top=0, right=64, bottom=0, feathering=24)
    pos = w.add("CLIPTextEncode", (380, 900), "What the wider picture shows",
                text="a red barn in a wide green field, blue sky, panorama", clip=(ckpt, 1))
    neg = w.add("CLIPTextEncode", (380, 1160), "Negative", text=NEGATIVE, clip=(ckpt, 1))
    encoded = w.add("VAEEncodeForInpaint", (760, 640), pixels=(padded, 0), vae=(ckpt, 2), mask=(padded, 1),
                    grow_mask_by=8)
    sampled = w.add("KSampler", (1120, 640), "Outpaint", model=(ckpt, 0), seed=42, steps=4, cfg=5.0,
                    sampler_name="euler", scheduler="normal", positive=(pos, 0), negative=(neg, 0),
                    latent_image=(encoded, 0), denoise=1.0)
    image = w.add("VAEDecode", (1480, 640), samples=(sampled, 0), vae=(ckpt, 2))
    keep = w.add("InvertMask", (1120, 1000), "Where the source stays", mask=(padded, 1))
    blended = w.add("ImageCompositeMasked", (1780, 640), "Source pixels back, feathered into the new ones",
                    destination=(image, 0), source=(padded, 0), x=0, y=0, resize_source=False, mask=(keep, 0))
    w.add("SaveImage", (2100, 640), images=(blended, 0), filename_prefix=w.name)
    w.note("Outpainting: Pad Image for Outpainting widens the canvas with mid-grey and gives the mask of the new "
           "area, which fades into the picture over the feathering width; VAE Encode (for Inpainting) and the "
           "sampler repaint only the masked area. Finally the source pixels are blended back through the inverted "
           "mask, so the picture away from the seams is exactly the source. The source picture is made in the "
           "first row (no input file needed); use Load Image for your own.\n" + RUN.format(name=w.name, family="SDXL"),
           (0, 1450))
    return w


def controlnet_canny() -> Workflow:
    from nodes.controlnet import DEMO_CONTROLNET

    w = Workflow("sdxl_controlnet_canny")
    ckpt = w.add("CheckpointLoaderSimple", (0, 200), ckpt_name=BASE)
    source = _source_image(w, ckpt, seed=7)
    edges = w.add("Canny", (380, 600), "Edges of the source", image=(source, 0), low_threshold=0.4,
                  high_threshold=0.8)
    w.add("PreviewImage", (760, 900), "The hint", images=(edges, 0))
    controlnet = w.add("ControlNetLoader", (380, 800), control_net_name=DEMO_CONTROLNET)
    pos = w.add("CLIPTextEncode", (380, 1000), "Positive", text="a wooden cabin in a snowy field, dusk",
                clip=(ckpt, 1))
    neg = w.add("CLIPTextEncode", (380, 1260), "Negative", text=NEGATIVE, clip=(ckpt, 1))
    applied = w.add("ControlNetApplyAdvanced", (760, 600), "Apply ControlNet", positive=(pos, 0), negative=(neg, 0),
                    control_net=(controlnet, 0), image=(edges, 0), strength=0.8, start_percent=0.0,
                    end_percent=0.8, vae=(ckpt, 2))
    latent = w.add("EmptyLatentImage", (760, 1260), width=256, height=256, batch_size=1)
    sampled = w.add("KSampler", (1120, 600), "Follow the edges", model=(ckpt, 0), seed=42, steps=4, cfg=5.0,
                    sampler_name="euler", scheduler="normal", positive=(applied, 0), negative=(applied, 1),
                    latent_image=(latent, 0), denoise=1.0)
    image = w.add("VAEDecode", (1480, 600), samples=(sampled, 0), vae=(ckpt, 2))
    w.add("SaveImage", (1780, 600), images=(image, 0), filename_prefix=w.name)
    w.note("ControlNet with Canny edges: the edges of a picture (made in the first row; use Load Image for your own) "
           "steer a new picture with another prompt to the same outlines. Apply ControlNet adds the ControlNet's "
           "residuals × strength to the UNet's skips and middle block over the first 80 % of the steps (start/end "
           "percent), both prompts; chain several Apply ControlNet nodes to combine ControlNets. The demo ControlNet "
           "(demo_controlnet_canny_sdxl.safetensors, in <models>/controlnet, written by latentgraph serve or "
           "make-demo-model) has random weights: pick a real SDXL Canny ControlNet (e.g. diffusers' "
           "controlnet-canny-sdxl-1.0) and a 1024² picture for real results.\n"
           + RUN.format(name=w.name, family="SDXL"), (0, 1500))
    return w


def revision() -> Workflow:
    from nodes.clip_vision import DEMO_CLIP_VISION

    w = Workflow("sdxl_revision")
    ckpt = w.add("CheckpointLoaderSimple", (0, 200), ckpt_name=BASE)
    source = _source_image(w, ckpt, seed=7)
    vision = w.add("CLIPVisionLoader", (0, 600), clip_name=DEMO_CLIP_VISION)
    seen = w.add("CLIPVisionEncode", (380, 600), "Encode the picture", clip_vision=(vision, 0), image=(source, 0),
                 crop="center")
    pos = w.add("CLIPTextEncode", (380, 800), "Prompt (its tokens stay)", text="a painting, snowy winter evening",
                clip=(ckpt, 1))
    neg = w.add("CLIPTextEncode", (380, 1060), "Negative", text=NEGATIVE, clip=(ckpt, 1))
    revised = w.add("unCLIPConditioning", (760, 700), "The picture replaces the pooled vector",
                    conditioning=(pos, 0), clip_vision_output=(seen, 0), strength=1.0, noise_augmentation=0.0)
    latent = w.add("EmptyLatentImage", (760, 1000), width=256, height=256, batch_size=1)
    sampled = w.add("KSampler", (1120, 700), "Revision", model=(ckpt, 0), seed=42, steps=4, cfg=5.0,
                    sampler_name="euler", scheduler="normal", positive=(revised, 0), negative=(neg, 0),
                    latent_image=(latent, 0), denoise=1.0)
    image = w.add("VAEDecode", (1480, 700), samples=(sampled, 0), vae=(ckpt, 2))
    w.add("SaveImage", (1780, 700), images=(image, 0), filename_prefix=w.name)
    w.note("SDXL revision: a picture as a prompt. CLIP Vision Encode runs a CLIP image tower (clip_vision_g, "
           "OpenCLIP ViT-bigG, from <models>/clip_vision) on the picture; unCLIPConditioning puts its 1280-wide image "
           "embedding, times strength, in place of the prompt's pooled bigG vector in the UNet's vector input, while "
           "the prompt's tokens still steer the cross-attention. Chain more unCLIPConditioning nodes to mix pictures "
           "(their embeddings add); noise_augmentation loosens how closely the picture is followed; a zeroed "
           "prompt (ConditioningZeroOut) leaves the picture alone in charge. The picture is made in the first row (no "
           "input file needed); use Load Image for your own. The demo CLIP vision model "
           "(demo_clip_vision_g.safetensors, written by latentgraph serve or make-demo-model) has random weights: "
           "use clip_vision_g.safetensors and a 1024² latent for real pictures.\n" + RUN.format(name=w.name,
                                                                                               family="SDXL"),
           (0, 1450))
    return w


ASPECT_DEMO = [(768, 1344), (896, 1152), (1024, 1024), (1152, 896), (1344, 768), (1536, 640)]
ASPECT_SCALE = 0.25


def aspect_buckets() -> Workflow:
    from nodes.library.latent import bucket_label

    w = Workflow("sdxl_aspect_buckets")
    ckpt = w.add("SDXLCheckpointLoader", (0, 200), ckpt_name=BASE)
    conds = []
    for i, (label, text) in enumerate((("positive", PROMPT), ("negative", NEGATIVE))):
        y = 480 * i
        clip_l = w.add("SDXLClipLTextEncode", (380, y), f"CLIP-L ({label})", clip=(ckpt, 1), text=text)
        clip_g = w.add("SDXLBigGTextEncode", (380, y + 220), f"bigG ({label})", clip=(ckpt, 1), text=text)
        conds.append(w.add("SDXLDualEncoderConcat", (760, y + 100), clip_l=(clip_l, 0), clip_g=(clip_g, 0)))
    for i, (width, height) in enumerate(ASPECT_DEMO):
        x = 1100 + 360 * (i % 3)
        y = 760 * (i // 3)
        latent = w.add("SDXLEmptyLatent", (x, y), f"Bucket {width}×{height}",
                       resolution=bucket_label(width, height), scale=ASPECT_SCALE)
        sampled = w.add("SDXLSampler", (x, y + 200), model=(ckpt, 0), positive=(conds[0], 0),
                        negative=(conds[1], 0), latent_image=(latent, 0), seed=42, steps=2, cfg=5.0)
        image = w.add("SDXLVAEDecode", (x, y + 480), samples=(sampled, 0), vae=(ckpt, 2))
        w.add("SaveImage", (x, y + 620), images=(image, 0), filename_prefix=f"bucket_{width}x{height}")
    w.note("SDXL's multi-aspect training (SDXL report §2.3, Appendix I): the base model was fine-tuned on buckets of "
           "about 1024² pixels with sides in multiples of 64, from 704×1408 to 1728×576 (all 26 are in the Empty "
           "Latent node's list). One image per bucket, same prompt and seed. For a quick CPU run the buckets are "
           f"drawn at scale {ASPECT_SCALE} (e.g. 1024×1024 → 256×256); set scale 1.0 with a real checkpoint.\n"
           + RUN.format(name=w.name, family="SDXL"), (0, 1000))
    return w


def _decode_and_save(w: Workflow, sampled: int, vae, x: int) -> None:
    """VAE Decode and Save Image (prefix: the workflow's name) in the top row from column ``x``."""
    image = w.add("VAEDecode", (x, 0), samples=(sampled, 0), vae=vae)
    w.add("SaveImage", (x + 300, 0), images=(image, 0), filename_prefix=w.name)


def _txt2img(w: Workflow, ckpt: int, clip, prompt: str, seed: int, size: int, steps: int, cfg: float,
             sampler_name: str = "euler", scheduler: str = "normal") -> int:
    """The standard text-to-image row (prompt, negative, empty latent, KSampler on ``ckpt``'s first output);
    returns the sampler."""
    pos = w.add("CLIPTextEncode", (380, 0), "Positive", text=prompt, clip=clip)
    neg = w.add("CLIPTextEncode", (380, 260), "Negative", text=NEGATIVE, clip=clip)
    latent = w.add("EmptyLatentImage", (380, 520), width=size, height=size, batch_size=1)
    return w.add("KSampler", (760, 0), model=(ckpt, 0), seed=seed, steps=steps, cfg=cfg, sampler_name=sampler_name,
                 scheduler=scheduler, positive=(pos, 0), negative=(neg, 0), latent_image=(latent, 0))


def sd15_txt2img() -> Workflow:
    w = Workflow("sd15_txt2img")
    ckpt = w.add("CheckpointLoaderSimple", (0, 200), ckpt_name=SD15)
    clip = w.add("CLIPSetLastLayer", (0, 420), "Clip skip (−1: off)", clip=(ckpt, 1), stop_at_clip_layer=-1)
    sampled = _txt2img(w, ckpt, (clip, 0), PROMPT, seed=42, size=256, steps=4, cfg=7.0)
    _decode_and_save(w, sampled, (ckpt, 2), 1120)
    w.note("Stable Diffusion 1.5 text-to-image: CLIP ViT-L/14 encodes the prompt (its last layer; set Clip skip to "
           "−2 for the layer before, as many SD 1.5 fine-tunes expect), the 860M UNet predicts the noise, the VAE "
           "decodes 64×64 latents into 512² pictures. The demo runs at 256² in 4 steps; use 512² and 20+ steps "
           "with a real checkpoint.\n" + RUN.format(name=w.name, family="SD 1.5"), (0, 760))
    return w


def sd15_img2img() -> Workflow:
    return _img2img("sd15_img2img", SD15, 7.0, "SD 1.5", (
        "Stable Diffusion 1.5 image-to-image: the picture made by the first row is encoded by the VAE (latents scaled "
        "by 0.18215), noised part of the way (denoise 0.6) and denoised with a new prompt. Replace the first row "
        "with Load Image feeding VAE Encode to start from your own picture."))


def sd2_768v_txt2img() -> Workflow:
    w = Workflow("sd2_768v_txt2img")
    ckpt = w.add("CheckpointLoaderSimple", (0, 200), ckpt_name=SD2_768V)
    model = w.add("ModelSamplingDiscrete", (0, 420), "v-prediction", model=(ckpt, 0), sampling="v_prediction")
    sampled = _txt2img(w, model, (ckpt, 1), PROMPT, seed=42, size=256, steps=4, cfg=7.0)
    _decode_and_save(w, sampled, (ckpt, 2), 1120)
    w.note("Stable Diffusion 2.1 768-v text-to-image: OpenCLIP ViT-H encodes the prompt (its penultimate layer), the "
           "UNet predicts v rather than the noise. The loader reads that from the file; ModelSamplingDiscrete states "
           "it here (choose eps for the 512-base models). The demo runs at 256² in 4 steps; the 768-v models are "
           "made for 768² images and 20+ steps.\n" + RUN.format(name=w.name, family="SD 2.x"), (0, 760))
    return w


def sdxl_turbo_1step() -> Workflow:
    """ComfyUI's SDXL Turbo example graph: custom sampling, one step from timestep 999, no guidance."""
    w = Workflow("sdxl_turbo_1step")
    ckpt = w.add("CheckpointLoaderSimple", (0, 200), ckpt_name=BASE)
    pos = w.add("CLIPTextEncode", (380, 0), "Positive", text=PROMPT, clip=(ckpt, 1))
    neg = w.add("CLIPTextEncode", (380, 260), "Negative", text=NEGATIVE, clip=(ckpt, 1))
    latent = w.add("EmptyLatentImage", (380, 520), width=256, height=256, batch_size=1)
    sampler = w.add("KSamplerSelect", (760, 0), sampler_name="euler_ancestral")
    sigmas = w.add("SDTurboScheduler", (760, 160), model=(ckpt, 0), steps=1, denoise=1.0)
    sampled = w.add("SamplerCustom", (1120, 0), model=(ckpt, 0), add_noise=True, noise_seed=42, cfg=1.0,
                    positive=(pos, 0), negative=(neg, 0), sampler=(sampler, 0), sigmas=(sigmas, 0),
                    latent_image=(latent, 0))
    _decode_and_save(w, sampled, (ckpt, 2), 1480)
    w.note("SDXL Turbo (adversarial diffusion distillation): one sampling step from pure noise, without "
           "classifier-free guidance (cfg 1 skips the negative), built from ComfyUI's custom-sampling nodes: "
           "KSamplerSelect picks the sampler, SDTurboScheduler gives the σ of timestep 999 (up to 10 steps: 999, 899, "
           "…), SamplerCustom samples. Turbo checkpoints have the SDXL base layout, so this graph names the base "
           "demo; put sd_xl_turbo_1.0_fp16.safetensors in the loader for real pictures (512², as it was trained).\n"
           + RUN.format(name=w.name, family="SDXL Turbo"), (0, 760))
    return w


def _sd3_sampler(w: Workflow, model: int, clip, prompt: str, latent, y: int, title: str, **sampler) -> int:
    """ComfyUI's SD3 example row: the prompt, a negative that is used as written for the first 10 % of the run and
    zeroed after it (ConditioningZeroOut, timestep ranges, combined), and KSampler with dpmpp_2m on sgm_uniform at
    cfg 4.5; ``model`` is ModelSamplingSD3's output."""
    pos = w.add("CLIPTextEncode", (380, y), "Positive", text=prompt, clip=clip)
    neg = w.add("CLIPTextEncode", (380, y + 260), "Negative", text=NEGATIVE, clip=clip)
    zero = w.add("ConditioningZeroOut", (760, y + 260), conditioning=(neg, 0))
    late = w.add("ConditioningSetTimestepRange", (760, y + 360), "Zeroed after 10 %", conditioning=(zero, 0),
                 start=0.1, end=1.0)
    early = w.add("ConditioningSetTimestepRange", (760, y + 500), "Negative for the first 10 %",
                  conditioning=(neg, 0), start=0.0, end=0.1)
    both = w.add("ConditioningCombine", (760, y + 640), conditioning_1=(late, 0), conditioning_2=(early, 0))
    return w.add("KSampler", (1120, y), title, model=(model, 0), steps=4, cfg=4.5, sampler_name="dpmpp_2m",
                 scheduler="sgm_uniform", positive=(pos, 0), negative=(both, 0), latent_image=latent, **sampler)


SD3_ABOUT = ("The MMDiT reads the prompt as CLIP-L ‖ CLIP-G penultimate states (zero-padded to 4096 wide) followed "
             "by T5-XXL's tokens, plus the pooled CLIP-L ‖ CLIP-G vector; it predicts a rectified-flow velocity, sampled "
             "with timesteps shifted towards noise (ModelSamplingSD3, shift 3). The negative prompt counts for the "
             "first 10 % of the steps and is zeroed after, as in ComfyUI's SD3 example. Latents have 16 channels "
             "(EmptySD3LatentImage). The demo runs at 256² in 4 steps; SD3 medium wants 1024² and about 28 steps.")


def _sd3_txt2img(w: Workflow, model, clip, vae, y: int) -> None:
    """SD3 text-to-image from the loaders' outputs (empty latent and ModelSamplingSD3 from row ``y`` of the loader
    column): the same prompt, seed, size and sampler in every SD3 text-to-image workflow."""
    latent = w.add("EmptySD3LatentImage", (0, y), width=256, height=256, batch_size=1)
    sampling = w.add("ModelSamplingSD3", (0, y + 180), model=model, shift=3.0)
    sampled = _sd3_sampler(w, sampling, clip, PROMPT, (latent, 0), 0, "KSampler", seed=42, denoise=1.0)
    _decode_and_save(w, sampled, vae, 1480)


def sd3_txt2img() -> Workflow:
    w = Workflow("sd3_txt2img")
    ckpt = w.add("CheckpointLoaderSimple", (0, 200), ckpt_name=SD3_INCL_CLIPS)
    _sd3_txt2img(w, (ckpt, 0), (ckpt, 1), (ckpt, 2), 420)
    w.note("SD3 medium text-to-image from the checkpoint that includes its text encoders "
           "(sd3_medium_incl_clips_t5xxlfp8: T5-XXL stored in float8). " + SD3_ABOUT + "\n"
           + RUN.format(name=w.name, family="SD3"), (0, 1000))
    return w


def sd3_img2img() -> Workflow:
    w = Workflow("sd3_img2img")
    ckpt = w.add("CheckpointLoaderSimple", (0, 200), ckpt_name=SD3)
    clip = w.add("TripleCLIPLoader", (0, 420), "CLIP-L, CLIP-G, T5-XXL", clip_name1=SD3_TEXT[0],
                 clip_name2=SD3_TEXT[1], clip_name3=SD3_TEXT[2])
    latent = w.add("EmptySD3LatentImage", (0, 640), width=256, height=256, batch_size=1)
    model = w.add("ModelSamplingSD3", (0, 820), model=(ckpt, 0), shift=3.0)
    source = _sd3_sampler(w, model, (clip, 0), "a red barn in a green field, blue sky", (latent, 0), 0,
                          "Make the source picture", seed=7, denoise=1.0)
    source_image = w.add("VAEDecode", (1480, 0), samples=(source, 0), vae=(ckpt, 2))
    w.add("SaveImage", (1780, 0), "Source image", images=(source_image, 0), filename_prefix="sd3_img2img_source")
    encoded = w.add("VAEEncode", (1480, 400), pixels=(source_image, 0), vae=(ckpt, 2))
    sampled = _sd3_sampler(w, model, (clip, 0), "a red barn in a snowy field at dusk", (encoded, 0), 900,
                           "img2img (denoise 0.6)", seed=42, denoise=0.6)
    image = w.add("VAEDecode", (1480, 900), samples=(sampled, 0), vae=(ckpt, 2))
    w.add("SaveImage", (1780, 900), images=(image, 0), filename_prefix="sd3_img2img")
    w.note("SD3 medium image-to-image: the checkpoint without text encoders (sd3_medium) and TripleCLIPLoader reading "
           "clip_l, clip_g and t5xxl from models/text_encoders. The first row makes the source picture, so the "
           "workflow needs no input file; the VAE encodes it ((z − 0.0609)·1.5305), denoise 0.6 runs the last 60 % "
           "of the schedule, from σ·noise + (1 − σ)·latent at its first σ, with a new prompt. " + SD3_ABOUT + "\n"
           + RUN.format(name=w.name, family="SD3"), (0, 1900))
    return w


def sd3_unet_only() -> Workflow:
    """sd3_txt2img from separate files, as SD3 is often downloaded."""
    w = Workflow("sd3_unet_only")
    unet = w.add("UNETLoader", (0, 200), unet_name=SD3_MMDIT, weight_dtype="default")
    clip = w.add("TripleCLIPLoader", (0, 360), "CLIP-L, CLIP-G, T5-XXL", clip_name1=SD3_TEXT[0],
                 clip_name2=SD3_TEXT[1], clip_name3=SD3_TEXT[2])
    vae = w.add("VAELoader", (0, 560), vae_name=SD3_VAE)
    _sd3_txt2img(w, (unet, 0), (clip, 0), (vae, 0), 680)
    w.note("SD3 medium text-to-image from separate files: the MMDiT, the three text encoders and the VAE each in "
           "its own file. Load Diffusion Model (UNETLoader) reads the MMDiT from models/diffusion_models "
           "(sd3_medium.safetensors, or diffusers' transformer/ folder), TripleCLIPLoader clip_l, clip_g and t5xxl "
           "from models/text_encoders (or models/clip), Load VAE the 16-channel VAE from models/vae "
           "(sd3_vae.safetensors, or diffusers' vae/ folder). With the same weights, prompt, seed and settings it "
           "draws what sd3_txt2img draws from the one checkpoint. " + SD3_ABOUT + "\n"
           + RUN.format(name=w.name, family="SD3"), (0, 1000))
    return w


def sdxl_lora() -> Workflow:
    w = Workflow("sdxl_lora")
    ckpt = w.add("CheckpointLoaderSimple", (0, 200), ckpt_name=BASE)
    lora = w.add("LoraLoader", (0, 420), model=(ckpt, 0), clip=(ckpt, 1), lora_name=SDXL_LORA, strength_model=1.0,
                 strength_clip=1.0)
    sampled = _txt2img(w, lora, (lora, 1), PROMPT, seed=42, size=256, steps=4, cfg=5.0)
    _decode_and_save(w, sampled, (ckpt, 2), 1120)
    w.note("A LoRA on SDXL: Load LoRA adds a small trained change to the UNet and to both text encoders, each at its "
           "own strength (negative reverses it; 0 leaves the model as it is). Chain several Load LoRA nodes to stack "
           "them. kohya-ss, diffusers/PEFT and LyCORIS files from <models>/loras are read; the checkpoint itself is "
           "never changed, so other graphs keep using it as it is. The demo LoRA (demo_sdxl_lora.safetensors, "
           "written by latentgraph serve or make-demo-model) has random weights: pick a real SDXL LoRA.\n"
           + RUN.format(name=w.name, family="SDXL"), (0, 760))
    return w


def sdxl_lcm_lora() -> Workflow:
    """ComfyUI's LCM-LoRA example graph: the LoRA on the model alone, LCM sampling, 4 steps, cfg 1."""
    w = Workflow("sdxl_lcm_lora")
    ckpt = w.add("CheckpointLoaderSimple", (0, 200), ckpt_name=BASE)
    lora = w.add("LoraLoaderModelOnly", (0, 420), model=(ckpt, 0), lora_name=LCM_LORA, strength_model=1.0)
    model = w.add("ModelSamplingDiscrete", (0, 600), "LCM sampling", model=(lora, 0), sampling="lcm")
    sampled = _txt2img(w, model, (ckpt, 1), PROMPT, seed=42, size=256, steps=4, cfg=1.0, sampler_name="lcm",
                       scheduler="sgm_uniform")
    _decode_and_save(w, sampled, (ckpt, 2), 1120)
    w.note("LCM-LoRA (latent consistency distillation as a LoRA): any SDXL checkpoint draws a picture in 4 steps. "
           "Load LoRA applies it to the model alone; ModelSamplingDiscrete with sampling lcm makes the model answer "
           "as a consistency model (LCM's boundary condition), and KSampler runs the lcm sampler on sgm_uniform "
           "steps at cfg 1 (up to 2; more burns the picture). The demo LoRA (demo_lcm_lora_sdxl.safetensors) has "
           "random weights: use lcm-lora-sdxl's pytorch_lora_weights.safetensors for real pictures.\n"
           + RUN.format(name=w.name, family="SDXL"), (0, 760))
    return w


ALL = [base_fine_grained, base_comfy, base_refiner, refiner_sdedit, img2img, inpaint, aspect_buckets,
       hires_upscale_model, outpaint, controlnet_canny, revision, sd15_txt2img, sd15_img2img, sd2_768v_txt2img,
       sdxl_turbo_1step, sdxl_lora, sdxl_lcm_lora, sd3_txt2img, sd3_img2img, sd3_unet_only]

if __name__ == "__main__":
    for make in ALL:
        print(make().save())
