"""Checkpoint loading: ours vs a raw safetensors read of the same file, each in its own subprocess; prints the
time and peak RSS of each.

Writes a random fp16 SDXL base checkpoint in the real single-file layout (full size: 2515 tensors, ~6.9 GB)
to a temp dir, streaming it tensor by tensor so writing needs little memory. One untimed raw read first, so every
timed run reads the file from the page cache (a checkpoint loaded before, or just downloaded).

    python benchmarks/load.py                    # full size, load to fp16 (the file's dtype)
    python benchmarks/load.py --dtype float32    # full size, load to fp32 (the CPU default; ~14 GB)
    python benchmarks/load.py --tiny             # smoke run on the demo-sized model
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

CHILD = r"""
import itertools, json, sys, time
import torch


def status(field):  # kB lines of /proc/self/status; VmHWM is this process's own peak (ru_maxrss is inherited)
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024


path, which, dtype = sys.argv[1], sys.argv[2], getattr(torch, sys.argv[3])
if which == "ours":
    # Imports are not loading. transformers imports lazily, so name the class: its first use would otherwise
    # import modeling_utils (and scipy through it) inside the timed load, ~0.9 s paid once per process.
    import open_clip.transformer  # noqa: F401
    from transformers import CLIPTextModel  # noqa: F401
    from nodes.checkpoints import load_checkpoint
    base = status("VmRSS")
    start = time.perf_counter()
    ck = load_checkpoint(path, dtype=dtype)
    mods = (ck.unet, ck.vae, ck.text.clip_l, ck.text.bigg)
    for m in mods:  # same-dtype CPU loads map the file lazily too: touch every weight, as for the raw read
        for t in itertools.chain(m.parameters(), m.buffers()):  # not state_dict(): its hooks cost ~3 ms more
            t.sum()
    elapsed = time.perf_counter() - start
    n = sum(p.numel() * p.element_size() for m in mods for p in m.parameters())
else:
    from safetensors.torch import load_file
    base = status("VmRSS")
    start = time.perf_counter()
    sd = load_file(path)
    for t in sd.values():  # load_file maps the file lazily; touch every tensor so the bytes are really read
        t.sum()
    elapsed = time.perf_counter() - start
    n = sum(t.numel() * t.element_size() for t in sd.values())
print(json.dumps({"seconds": elapsed, "peak_rss": status("VmHWM") - base, "bytes": n}))
"""


def full_shapes(tiny: bool, tmp: str) -> dict[str, tuple]:
    if tiny:
        from nodes.demo import make_demo_models
        from nodes.weights import read_shapes
        path = make_demo_models(Path(tmp) / "demo")["sdxl_base"]  # inside the run's temp dir, removed with it
        return read_shapes(path)
    from nodes.families import family_of
    return family_of("sdxl_base").full_size_shapes()


def write_random_checkpoint(path: Path, shapes: dict[str, tuple]) -> int:
    """Stream a safetensors file: fp16 N(0, 0.02) everywhere, int64 position_ids."""
    header, offset = {}, 0
    for k in sorted(shapes):
        dtype = "I64" if k.endswith("position_ids") else "F16"
        n = 1
        for s in shapes[k]:
            n *= s
        size = n * (8 if dtype == "I64" else 2)
        header[k] = {"dtype": dtype, "shape": list(shapes[k]), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    g = torch.Generator().manual_seed(0)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for k in sorted(shapes):
            if header[k]["dtype"] == "I64":
                t = torch.arange(shapes[k][-1], dtype=torch.int64).expand(shapes[k]).contiguous()
            else:
                t = (torch.randn(shapes[k], generator=g) * 0.02).half()
            f.write(t.numpy().tobytes())
        f.flush()
        os.fsync(f.fileno())  # written back before anything is timed: the timed reads do not meet writeback
    return offset


def run_child(path: Path, which: str, dtype: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), which, dtype], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="demo-sized smoke run")
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lg-load-") as tmp:
        path = Path(tmp) / "random_sdxl_base_fp16.safetensors"
        size = write_random_checkpoint(path, full_shapes(args.tiny, tmp))
        print(f"wrote {path.name}: {size / 1e9:.2f} GB of tensors")
        run_child(path, "raw", args.dtype)  # untimed: the file was just written, and may be partly out of the cache
        results = {"raw": [], "ours": []}
        for _ in range(args.repeats):  # alternate, so page-cache effects fall on both
            for which in ("raw", "ours"):
                results[which].append(run_child(path, which, args.dtype))
    for which, runs in results.items():
        sec = statistics.median(r["seconds"] for r in runs)
        rss = max(r["peak_rss"] for r in runs)
        print(f"{which:5s} median {sec:.2f}s  peak RSS above start {rss / 1e9:.2f} GB  weights held {runs[0]['bytes'] / 1e9:.2f} GB "
              f"(RSS/weights {rss / runs[0]['bytes']:.3f})")
    ours, raw = results["ours"], results["raw"]
    print(f"time ratio ours/raw read {statistics.median(r['seconds'] for r in ours) / statistics.median(r['seconds'] for r in raw):.3f}")


if __name__ == "__main__":
    main()
