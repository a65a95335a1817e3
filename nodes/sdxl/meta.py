"""Building modules only to fill them from a file: on the meta device, without init, then adopting the file's
tensors as they are (no copy)."""
from __future__ import annotations

import gc
from contextlib import contextmanager

import torch
from torch import nn

# The layers whose constructors call reset_parameters(); inside empty_modules that is a no-op.
_INIT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.LayerNorm, nn.GroupNorm, nn.Embedding)


def _skip_reset(self) -> None:
    pass


@contextmanager
def empty_modules():
    """Modules built in this block live on the meta device and skip their random init: every tensor is replaced
    from the file, and init costs Python time even on meta (building the full-size UNet: 186 → 58 ms).

    transformers' ``no_init_weights`` patches ``torch.nn.init`` (and ``PreTrainedModel.init_weights``) process-wide
    for the duration, and the torch layers' ``reset_parameters`` is a no-op (it still costs ~10 µs a layer with a
    no-op init), so the block should only build modules."""
    from transformers.initialization import no_init_weights

    saved = [(cls, cls.__dict__.get("reset_parameters")) for cls in _INIT_LAYERS]  # None: inherited
    try:
        for cls, _ in saved:
            cls.reset_parameters = _skip_reset
        with torch.device("meta"), no_init_weights():
            yield
    finally:
        for cls, reset in saved:
            if reset is None:
                del cls.reset_parameters
            else:
                cls.reset_parameters = reset


@contextmanager
def gc_paused():
    """No cyclic garbage collection in this block. Building a checkpoint's modules creates ~57,000 tracked objects
    and no garbage, yet triggers ~80 collections that walk them (6 ms of a 120 ms load)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def state_slots(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's parameters and persistent buffers by state-dict key: ``state_dict()``'s keys and tensors, without
    its hook machinery (8 → 3 ms for the full-size UNet)."""
    out = {}
    for path, sub in module.named_modules():
        prefix = path + "." if path else ""
        out.update((prefix + name, p) for name, p in sub._parameters.items() if p is not None)
        out.update((prefix + name, b) for name, b in sub._buffers.items()
                   if b is not None and name not in sub._non_persistent_buffers_set)
    return out


class StateMismatch(ValueError):
    """``state`` does not fit the module: the keys missing from it, those it has that the module lacks, and the
    misshapen ones as "key (shape in state) vs (module's shape)"."""

    def __init__(self, missing: list[str], unexpected: list[str], wrong: list[str]):
        self.missing, self.unexpected, self.wrong = missing, unexpected, wrong
        parts = [f"{label} {len(keys)}: {', '.join(keys[:5])}{' …' if len(keys) > 5 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        super().__init__("; ".join(parts))


def adopt(module: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Make ``state``'s tensors the module's frozen parameters and persistent buffers, and put it in eval mode; raise
    StateMismatch, leaving its tensors as they were, unless the keys and shapes fit exactly.

    What ``load_state_dict(state, strict=True, assign=True)`` then ``.eval().requires_grad_(False)`` do, in one walk
    over the modules: load_state_dict filters the whole state dict for every submodule (45 ms for the full-size
    UNet). The modules must not customise loading."""
    params, buffers, missing, wrong = [], [], [], []
    for path, sub in module.named_modules():
        prefix = path + "." if path else ""
        # eval mode, as .eval() sets it; straight into __dict__, because nn.Module.__setattr__ costs 3 µs a module
        sub.__dict__["training"] = False
        for slots, into, skip in ((sub._parameters, params, ()), (sub._buffers, buffers, sub._non_persistent_buffers_set)):
            for name, old in slots.items():
                if old is None or name in skip:
                    continue
                new = state.get(prefix + name)
                if new is None:
                    missing.append(prefix + name)
                elif new.shape != old.shape:
                    wrong.append(f"{prefix}{name} {tuple(new.shape)} vs {tuple(old.shape)}")
                else:
                    into.append((slots, name, new))
    if missing or wrong or len(params) + len(buffers) != len(state):
        expected = state_slots(module)
        raise StateMismatch(missing, [k for k in state if k not in expected], wrong)
    for slots, name, tensor in params:
        slots[name] = nn.Parameter(tensor, requires_grad=False)
    for slots, name, tensor in buffers:
        slots[name] = tensor
    return module
