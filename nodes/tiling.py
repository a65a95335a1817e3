"""Overlapping tiles: run a convolutional network on windows of a large input and blend the results, so memory is
bounded by one tile's activations (VAE encode/decode, upscale models)."""
from __future__ import annotations

import torch


def _blend_mask(h: int, w: int, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """Weights that ramp linearly over the overlaps on the sides that have a neighbour tile."""
    def ramp(n, lo, hi):
        r = torch.ones(n)
        if lo:
            r[:lo] = torch.linspace(0, 1, lo + 2)[1:-1]
        if hi:
            r[n - hi:] = torch.linspace(1, 0, hi + 2)[1:-1]
        return r
    return ramp(h, top, bottom)[:, None] * ramp(w, left, right)[None, :]


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride)) + [size - tile]
    return sorted(set(starts))


def tiled_apply(fn, x: torch.Tensor, tile: int, overlap: int, scale: float, out_channels: int) -> torch.Tensor:
    """Run ``fn`` on overlapping ``tile``² windows of x (input units) and blend the outputs (scaled by ``scale``)
    with linear ramps over the overlaps."""
    b, _, h, w = x.shape
    out_h, out_w = round(h * scale), round(w * scale)
    out = torch.zeros(b, out_channels, out_h, out_w, dtype=torch.float32, device=x.device)
    weight = torch.zeros(1, 1, out_h, out_w, dtype=torch.float32, device=x.device)
    ys, xs = _starts(h, tile, overlap), _starts(w, tile, overlap)
    for y0 in ys:
        for x0 in xs:
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            piece = fn(x[:, :, y0:y1, x0:x1]).float()
            oy0, ox0 = round(y0 * scale), round(x0 * scale)
            ph, pw = piece.shape[-2:]
            # overlap with the previous / next tile on each side, in output units
            top = round((ys[ys.index(y0) - 1] + tile - y0) * scale) if y0 != ys[0] else 0
            left = round((xs[xs.index(x0) - 1] + tile - x0) * scale) if x0 != xs[0] else 0
            bottom = round((y1 - ys[ys.index(y0) + 1]) * scale) if y0 != ys[-1] else 0
            right = round((x1 - xs[xs.index(x0) + 1]) * scale) if x0 != xs[-1] else 0
            mask = _blend_mask(ph, pw, top, bottom, left, right).to(x.device)
            out[:, :, oy0:oy0 + ph, ox0:ox0 + pw] += piece * mask
            weight[:, :, oy0:oy0 + ph, ox0:ox0 + pw] += mask
    return out / weight


def tile_count(h: int, w: int, tile: int, overlap: int) -> int:
    """How many windows tiled_apply runs on an h×w input."""
    return len(_starts(h, tile, overlap)) * len(_starts(w, tile, overlap))
