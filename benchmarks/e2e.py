"""Full-size SDXL base end to end, fp32 on CPU: `latentgraph serve` against diffusers' StableDiffusionXLPipeline on
the same random weights, in one run; prints the ratios cold and warm.

The work is the shipped workflows/sdxl_base.json: 256×256, 4 Euler steps, CFG 5 (the UNet runs at batch 2), both
text encoders on a prompt and a negative prompt, the VAE decode, a PNG written. diffusers runs the same: same
prompts, size, steps, guidance, Euler, a PNG saved.

- Weights: a random fp16 SDXL base in the single-file layout (as benchmarks/load.py writes it; the file SDXL is
  published as and ComfyUI users hold) and the same tensors as a diffusers folder (unet/, vae/, text_encoder/,
  text_encoder_2/). Ours loads the single file (or with --layout diffusers the folder), diffusers loads the folder
  with from_pretrained; both to fp32. Written once into --weights and reused.
- Ours: a real `latentgraph serve` process, the workflow submitted over HTTP and followed on /ws.
  diffusers: a fresh Python process that imports diffusers, builds the pipeline and calls it.
- cold: from starting the process to the image written, with the model read from the page cache; split into the
  process start (server answering HTTP / imports done) and the prompt (submission → image / load + call).
- warm: the same process again with another prompt and seed, so every model runs again (nothing cached).
- The two sides run one after the other (each needs ~10 GB), alternating for --rounds rounds; medians and minima
  are printed. Per-node times for ours come from the /ws `executing` messages.
- Other work on the machine: diffusers runs at the nice level of our executor process, so that it weighs on both
  alike, and each run prints the load average before it and the seconds its processes spent waiting for a core
  (benchmarks/machine.py): near 0 on a quiet machine.

    .venv/bin/python benchmarks/e2e.py [--rounds 2] [--weights DIR] [--layout single|diffusers]
    .venv/bin/python benchmarks/e2e.py --tiny     # smoke run on the demo checkpoints
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# run as a script, this file's folder comes first on sys.path and its name would hide the `server` package
sys.path[:1] = [str(REPO), str(REPO / "tests"), str(REPO / "benchmarks")]
from machine import load_average, waited  # noqa: E402

from server.runners import EXECUTOR_NICE  # noqa: E402

PROMPTS = [("a majestic lion jumping from a big stone at night, highly detailed", "blurry, low quality", 42),
           ("a lighthouse on a rocky coast in a storm, oil painting", "washed out, text", 7)]
SIZE, STEPS, CFG = 256, 4, 5.0
FULL_SIZE = ("sdxl_base_random.safetensors", "sdxl_base_random_diffusers")  # the single file, the diffusers folder
TINY = ("demo_sdxl_base.safetensors", "demo_sdxl_base_diffusers")


# -- weights ------------------------------------------------------------------------------------------------------
def write_weights(root: Path, tiny: bool) -> tuple[str, str]:
    """The random base as a single file and as a diffusers folder with the same tensors (skipped if present);
    returns their names in `root`."""
    import torch
    from load import full_shapes, write_random_checkpoint

    from nodes import demo
    from nodes.checkpoints import load_checkpoint
    from nodes.families.sdxl import BIGG_PREFIX, CLIP_L_PREFIX
    from nodes.sdxl.text import BIGG, CLIP_L
    from nodes.weights import read_tensors

    if tiny:
        demo.make_demo_models(root)
        return TINY
    done = root / "complete"
    if done.exists():
        return FULL_SIZE
    root.mkdir(parents=True, exist_ok=True)
    single = root / FULL_SIZE[0]
    start = time.perf_counter()
    write_random_checkpoint(single, full_shapes(False, str(root)))
    # the UNet and VAE as our loader builds them, fp16 views of a map of the file (no copy); the text towers' tensors
    ckpt = load_checkpoint(single, dtype=torch.float16, with_text=False)
    sd = read_tensors(single, lambda k: k, torch.float16, "cpu")

    def part(prefix: str) -> dict:
        return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix) and not k.endswith("position_ids")}

    def text_config(cfg, act: str, arch: str) -> dict:
        return {"architectures": [arch], "hidden_size": cfg.width, "intermediate_size": cfg.mlp_width,
                "num_attention_heads": cfg.heads, "num_hidden_layers": cfg.layers, "vocab_size": cfg.vocab,
                "max_position_embeddings": cfg.context, "hidden_act": act, "projection_dim": cfg.proj_dim or cfg.width,
                "model_type": "clip_text_model"}

    text = {"text_encoder": (part(CLIP_L_PREFIX), text_config(CLIP_L, "quick_gelu", "CLIPTextModel")),
            "text_encoder_2": (demo.open_clip_to_hf(part(BIGG_PREFIX["sdxl_base"])),
                               text_config(BIGG, "gelu", "CLIPTextModelWithProjection"))}
    demo.write_diffusers(root / FULL_SIZE[1], ckpt.unet, ckpt.vae, text,
                         {"_class_name": "StableDiffusionXLPipeline"})
    done.write_text("")
    print(f"wrote the random weights to {root} in {time.perf_counter() - start:.0f}s", flush=True)
    return FULL_SIZE


# -- ours: a real server ------------------------------------------------------------------------------------------
def workflow(checkpoint: str, prompt: str, negative: str, seed: int) -> dict:
    """workflows/sdxl_base.json (UI format, as the canvas submits it) on `checkpoint` with the prompts and seed."""
    ui = json.loads((REPO / "workflows" / "sdxl_base.json").read_text())
    nodes = {n["id"]: n for n in ui["nodes"]}
    texts = {"SDXLClipLTextEncode": [], "SDXLBigGTextEncode": []}
    for n in ui["nodes"]:
        if n["type"] in texts:
            texts[n["type"]].append(n)
    nodes[1]["widgets_values"][0] = checkpoint
    for kind in texts:  # the positive encoders come first in the file (ids 3, 4), the negative ones after (7, 8)
        positive, negative_node = sorted(texts[kind], key=lambda n: n["id"])
        positive["widgets_values"][0], negative_node["widgets_values"][0] = prompt, negative
    sampler = next(n for n in ui["nodes"] if n["type"] == "SDXLSampler")
    sampler["widgets_values"][0] = seed
    assert sampler["widgets_values"][2] == STEPS and sampler["widgets_values"][3] == CFG
    return ui


async def follow(session, base: str, ws, prompt: dict, names: dict[str, str], server: int) -> dict:
    """Submit `prompt`, follow it on /ws to its end: seconds from submission to success, and per node type."""
    import aiohttp

    started, waited_before = time.perf_counter(), waited(server)
    async with session.post(f"{base}/prompt", json={"prompt": prompt, "client_id": "e2e"}) as r:
        assert r.status == 200, await r.text()
        pid = (await r.json())["prompt_id"]
    nodes: dict[str, float] = {}
    current, since = None, started
    async for msg in ws:
        if msg.type != aiohttp.WSMsgType.TEXT:  # binary frames: latent previews
            continue
        m = json.loads(msg.data)
        if m["data"].get("prompt_id") != pid:
            continue
        if m["type"] == "execution_error":
            raise RuntimeError(m["data"]["exception_message"])
        if m["type"] in ("executing", "execution_success"):
            now = time.perf_counter()
            if current is not None:
                key = names.get(current, current)
                nodes[key] = nodes.get(key, 0.0) + now - since
            current, since = m["data"].get("node"), now
            if m["type"] == "execution_success":
                return {"prompt": now - started, "nodes": nodes, "waited": waited(server) - waited_before}
    raise RuntimeError("the websocket closed")


async def run_ours(root: Path, name: str) -> dict:
    import aiohttp
    from server_helpers import free_port, start_server

    with tempfile.TemporaryDirectory(prefix="lg-e2e-") as tmp:
        tmp = Path(tmp)
        (tmp / "models" / "checkpoints").mkdir(parents=True)
        (tmp / "models" / "checkpoints" / name).symlink_to(root / name)
        port, start = free_port(), time.perf_counter()
        proc = start_server(tmp, port)
        ready = time.perf_counter() - start
        try:
            base = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession() as session, session.ws_connect(f"{base}/ws?clientId=e2e") as ws:
                runs = []
                for prompt, negative, seed in PROMPTS:
                    ui = workflow(name, prompt, negative, seed)
                    names = {str(n["id"]): n["type"] for n in ui["nodes"]}
                    runs.append(await follow(session, base, ws, ui, names, proc.pid))
            return {"start": ready, "cold": ready + runs[0]["prompt"], "cold_prompt": runs[0]["prompt"],
                    "warm": runs[1]["prompt"], "waited cold": runs[0]["waited"], "waited warm": runs[1]["waited"],
                    "cold_nodes": runs[0]["nodes"], "warm_nodes": runs[1]["nodes"]}
        finally:
            proc.terminate()
            proc.wait(60)


# -- diffusers: a fresh process -----------------------------------------------------------------------------------
def diffusers_child(folder: str, out: str) -> None:
    """Runs in the child: import, build the pipeline from the folder, call it twice; prints the times as JSON."""
    started = float(os.environ["E2E_STARTED"])
    os.nice(EXECUTOR_NICE)
    import torch
    from pipeline_oracle import base_pipeline, euler_karras

    imported = time.time()
    t0 = time.perf_counter()
    pipe = base_pipeline(Path(folder), euler_karras())  # Euler: one UNet call (batch 2) per step, as ours
    load = time.perf_counter() - t0
    calls, waits = [], [waited()]
    for i, (prompt, negative, seed) in enumerate(PROMPTS):
        t0 = time.perf_counter()
        image = pipe(prompt, negative_prompt=negative, height=SIZE, width=SIZE, num_inference_steps=STEPS,
                     guidance_scale=CFG, generator=torch.Generator().manual_seed(seed)).images[0]
        image.save(Path(out) / f"diffusers_{i}.png")
        calls.append(time.perf_counter() - t0)
        waits.append(waited())
    print(json.dumps({"start": imported - started, "load": load, "calls": calls, "waits": waits}))


def run_diffusers(folder: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="lg-e2e-") as out:
        started = time.time()
        done = subprocess.run([sys.executable, __file__, "--child", str(folder), out], check=True, text=True,
                              capture_output=True, env={**os.environ, "E2E_STARTED": repr(started)})
        r = json.loads(done.stdout.strip().splitlines()[-1])
    return {"start": r["start"], "cold": r["start"] + r["load"] + r["calls"][0], "cold_prompt": r["load"] + r["calls"][0],
            "load": r["load"], "warm": r["calls"][1], "waited cold": r["waits"][1], "waited warm": r["waits"][2] - r["waits"][1]}


# -- the run ------------------------------------------------------------------------------------------------------
def read_through(path: Path) -> None:
    """Read every file under `path` once, untimed: each side's cold run finds its weights in the page cache (a
    model used before, or just downloaded), whichever ran before it."""
    for f in sorted([path] if path.is_file() else path.rglob("*")):
        if f.is_file():
            with open(f, "rb", buffering=0) as fh:
                while fh.read(1 << 24):
                    pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--weights", type=Path, default=Path(tempfile.gettempdir()) / "latentgraph-e2e-weights",
                    help="where the random weights are written once and reused (~14 GB: both layouts)")
    ap.add_argument("--layout", choices=["single", "diffusers"], default="single", help="the file ours loads")
    ap.add_argument("--tiny", action="store_true", help="smoke run on the demo checkpoints")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return diffusers_child(*args.child)
    if not args.tiny:
        return bench(args)
    with tempfile.TemporaryDirectory(prefix="lg-e2e-tiny-") as tmp:
        args.weights = Path(tmp)
        bench(args)


def bench(args) -> None:
    single, folder = write_weights(args.weights, args.tiny)
    ours_file = args.weights / (single if args.layout == "single" else folder)
    results = {"ours": [], "diffusers": []}
    for i in range(args.rounds):
        for side in (("ours", "diffusers") if i % 2 == 0 else ("diffusers", "ours")):
            read_through(ours_file if side == "ours" else args.weights / folder)
            load = load_average()
            r = asyncio.run(run_ours(args.weights, ours_file.name)) if side == "ours" else run_diffusers(
                args.weights / folder)
            results[side].append(r)
            parts = ", ".join(f"{k} {v:.1f}s" for k, v in r.items() if isinstance(v, float))
            print(f"round {i + 1} {side:9s} {parts}   (load average before: {load})", flush=True)
            for kind in ("cold_nodes", "warm_nodes"):
                if kind in r:
                    print(f"    {kind.split('_')[0]:4s} per node: " + ", ".join(
                        f"{k} {v:.2f}s" for k, v in sorted(r[kind].items(), key=lambda kv: -kv[1]) if v >= 0.01))
    print(f"{os.cpu_count()} cores; load average now {load_average()}")
    for what in ("start", "cold_prompt", "cold", "warm"):
        for name, pick in (("median", statistics.median), ("min", min)):
            ours, theirs = (pick(r[what] for r in results[side]) for side in ("ours", "diffusers"))
            print(f"{what:12s} {name:6s} ours {ours:6.1f}s  diffusers {theirs:6.1f}s  ratio {ours / theirs:.3f}")


if __name__ == "__main__":
    main()
