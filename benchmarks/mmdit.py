"""The full-size SD3-medium MMDiT, fp32 on CPU: ours vs diffusers' SD3Transformer2DModel holding the same weights.

Both models share one set of weight tensors (diffusers' is built on the meta device and adopts ours under its names;
its q, k and v are views of our fused projections), so the run needs one model's memory (~8.5 GB). Runs alternate in
one process; prints the median ratio. The context is 154 tokens (77 CLIP, 77 T5), as a short prompt gives.

    python benchmarks/mmdit.py               # SD3 medium, latent 64×64 (512² images), batch 2: ~9 GB RAM, minutes
    python benchmarks/mmdit.py --depth 2     # full width, 2 joint blocks: ~1 GB RAM, the per-block ratio
    python benchmarks/mmdit.py --tiny        # smoke run on the tiny preset
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch
from unet import timed  # benchmarks/ is the script's folder

from nodes.families.sd3 import TINY_MMDIT, mmdit_config_to_diffusers, mmdit_to_diffusers
from nodes.mmdit.mmdit import SD3_MEDIUM, MMDiT

CONTEXT_TOKENS = 154


def build(cfg):
    from diffusers import SD3Transformer2DModel
    torch.manual_seed(0)
    ours = MMDiT(cfg).eval().requires_grad_(False)
    for p in ours.parameters():  # default inits leave the adaLN and output layers as they are; draw everything
        p.normal_(0, 0.02)
    ours.pos_embed.normal_(0, 0.02)
    conf = {k: v for k, v in mmdit_config_to_diffusers(cfg).items() if not k.startswith("_")}
    with torch.device("meta"):
        ref = SD3Transformer2DModel(**conf)
    ref.load_state_dict(mmdit_to_diffusers(ours.state_dict(), cfg), strict=True, assign=True)
    return ours, ref.eval().requires_grad_(False)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny preset smoke run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=64, help="latent side")
    ap.add_argument("--depth", type=int, help="joint blocks (default: the preset's)")
    args = ap.parse_args()
    cfg = TINY_MMDIT if args.tiny else SD3_MEDIUM
    cfg = dataclasses.replace(cfg, depth=args.depth or cfg.depth)
    t0 = time.perf_counter()
    ours, ref = build(cfg)
    print(f"built {'tiny' if args.tiny else 'full-size SD3-medium'} MMDiT, depth {cfg.depth} "
          f"({sum(p.numel() for p in ours.parameters()):,} params, shared) in {time.perf_counter() - t0:.1f}s; "
          f"threads {torch.get_num_threads()}")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, cfg.in_channels, args.size, args.size, generator=g)
    t = torch.tensor([600.0] * args.batch)
    context = torch.randn(args.batch, CONTEXT_TOKENS, cfg.context_dim, generator=g)
    pooled = torch.randn(args.batch, cfg.pooled_dim, generator=g)
    runs = [("ours", lambda: ours(x, t, context, pooled)),
            ("diffusers", lambda: ref(hidden_states=x, encoder_hidden_states=context, pooled_projections=pooled,
                                      timestep=t).sample)]
    with torch.inference_mode():
        a, b = (fn() for _, fn in runs)  # warm-up, and a check that they agree
        err = ((a - b).abs().max() / b.abs().max()).item()
        times = {name: [] for name, _ in runs}
        for i in range(args.runs):
            for name, fn in runs if i % 2 == 0 else runs[::-1]:
                times[name].append(timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:10s} median {med[k]:.3f}s  runs {', '.join(f'{x:.3f}' for x in v)}")
    print(f"max relative difference of outputs {err:.2e}")
    print(f"ratio ours/diffusers (median) {med['ours'] / med['diffusers']:.3f}")

if __name__ == "__main__":
    main()
