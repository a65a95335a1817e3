"""A full-size UNet, fp32 on CPU: ours vs diffusers' UNet2DConditionModel holding the same weights.

Both models share one set of weight tensors (diffusers' is built on the meta device and adopts ours under its
names), so the run needs one model's memory. Runs alternate in one process; prints the median ratio.

It also prints how close each side comes to the machine: the call's FLOPs (torch's FlopCounterMode, counted on
the untimed first call of each side) over its median time, against the fp32 matmul peak measured in the same
run (the best of square GEMMs timed between the rounds), and the time each round's calls spent waiting for a
core (scheduler statistics), which shows when other work on the machine disturbed a run.

    python benchmarks/unet.py                          # SDXL base (latent 32×32, batch 2): ~11 GB RAM, minutes
    python benchmarks/unet.py --family sd15 --size 64  # SD 1.5 (latent 64×64, batch 2): ~4 GB RAM
    python benchmarks/unet.py --tiny                   # smoke run on the family's tiny preset
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from machine import waited

from nodes.demo import unet_config_to_diffusers
from nodes.families.ldm import unet_diffusers_names
from nodes.families.sd1 import SD15_UNET, TINY_SD1_UNET
from nodes.families.sd2 import SD21_UNET, TINY_SD2_UNET
from nodes.sdxl.configs import SDXL_BASE_UNET, TINY_BASE_UNET, TINY_BIGG_WIDTH
from nodes.sdxl.embeddings import timestep_embedding
from nodes.sdxl.unet import UNetModel

# family: (full-size config, tiny config, pooled text width for SDXL's vector input)
FAMILIES = {"sdxl": (SDXL_BASE_UNET, TINY_BASE_UNET, 1280), "sd15": (SD15_UNET, TINY_SD1_UNET, 0),
            "sd21": (SD21_UNET, TINY_SD2_UNET, 0)}


def build(cfg):
    from diffusers import UNet2DConditionModel
    torch.manual_seed(0)
    ours = UNetModel(cfg).eval().requires_grad_(False)
    conf = {k: v for k, v in unet_config_to_diffusers(cfg).items() if not k.startswith("_")}
    with torch.device("meta"):
        ref = UNet2DConditionModel(**conf)
    names = unet_diffusers_names(cfg)
    ref.load_state_dict({names[k]: v for k, v in ours.state_dict().items()}, strict=True, assign=True)
    return ours, ref.eval().requires_grad_(False)


def inputs(cfg, pooled_width, batch, size):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, size, size, generator=g)
    t = torch.tensor([600.0] * batch)
    context = torch.randn(batch, 77, cfg.context_dim, generator=g)
    if not cfg.adm_in_channels:
        return (x, t, context), dict(sample=x, timestep=t, encoder_hidden_states=context)
    pooled = torch.randn(batch, pooled_width, generator=g)
    ids = torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]] * batch)
    y = torch.cat([pooled, timestep_embedding(ids.flatten(), 256).reshape(batch, -1)], 1)
    return (x, t, context, y), dict(sample=x, timestep=t, encoder_hidden_states=context,
                                    added_cond_kwargs={"text_embeds": pooled, "time_ids": ids})


def matmul_peak(n: int = 3072, repeats: int = 3) -> float:
    """GFLOP/s of the best of `repeats` n×n×n fp32 GEMMs (torch.mm, all threads)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def counted(fn) -> float:
    """FLOPs of one call of `fn`."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", default="sdxl", choices=list(FAMILIES), help="which UNet (default: SDXL base)")
    ap.add_argument("--tiny", action="store_true", help="tiny preset smoke run")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=32, help="latent side")
    args = ap.parse_args()
    full, tiny, pooled = FAMILIES[args.family]
    cfg, pooled = (tiny, TINY_BIGG_WIDTH) if args.tiny else (full, pooled)
    t0 = time.perf_counter()
    ours, ref = build(cfg)
    print(f"built {'tiny' if args.tiny else 'full-size'} {args.family} UNet "
          f"({sum(p.numel() for p in ours.parameters()):,} params, shared) in {time.perf_counter() - t0:.1f}s; "
          f"threads {torch.get_num_threads()}")
    ours_in, ref_in = inputs(cfg, pooled, args.batch, args.size)
    with torch.inference_mode():
        a, b = ours(*ours_in), ref(**ref_in).sample  # a check that they agree
        err = ((a - b).abs().max() / b.abs().max()).item()
        runs = [("ours", lambda: ours(*ours_in)), ("diffusers", lambda: ref(**ref_in))]
        flops = {name: counted(fn) for name, fn in runs}  # also the warm-up
        times = {"ours": [], "diffusers": []}
        peaks = []
        for i in range(args.runs):
            peaks.append(matmul_peak())
            before = waited()
            for name, fn in runs if i % 2 == 0 else runs[::-1]:
                times[name].append(timed(fn))
            print(f"round {i + 1}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items())
                  + f"; matmul peak {peaks[-1]:.0f} GFLOP/s; waited for a core {waited() - before:.2f}s", flush=True)
    peak = max(peaks)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        rate = flops[k] / med[k] / 1e9
        print(f"{k:10s} median {med[k]:.3f}s  {flops[k] / 1e9:.1f} GFLOP per call: {rate:.0f} GFLOP/s, "
              f"{rate / peak:.0%} of the fp32 matmul peak {peak:.0f} GFLOP/s")
    print(f"max relative difference of outputs {err:.2e}")
    print(f"ratio ours/diffusers (median) {med['ours'] / med['diffusers']:.3f}")


if __name__ == "__main__":
    main()
