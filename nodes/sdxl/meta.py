"""Building modules only to fill them from a file: on the meta device, without init, then adopting the file's
tensors as they are (no copy)."""
from __future__ import annotations

import gc
import threading
from contextlib import ExitStack, contextmanager

import torch
import torch.nn.modules.module as torch_module
from torch import nn

# The layers whose constructors call reset_parameters(); inside building() that is a no-op.
_INIT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.LayerNorm, nn.GroupNorm, nn.Embedding)


def _skip_reset(self) -> None:
    pass


_module_setattr = nn.Module.__setattr__


def _first_setattr(self: nn.Module, name: str, value) -> None:
    """``nn.Module.__setattr__`` with a fast path for what building a module does: a first assignment of a name, to
    a Parameter, a submodule or a plain value. The result is the original's (the checks below are the ones it makes
    on that path); anything else goes to the original. The original's general bookkeeping (a closure per call,
    Parameter's Python ``isinstance`` check, register_parameter's checks) is a third of building a full-size UNet."""
    d = self.__dict__
    params = d.get("_parameters")
    if params is not None and name not in d and name not in params and name not in d["_buffers"] \
            and name not in d["_modules"]:
        if type(value) is nn.Parameter:
            if name and "." not in name and not hasattr(type(self), name) \
                    and not torch_module._global_parameter_registration_hooks:
                params[name] = value
                return
        elif isinstance(value, nn.Module):
            if not torch_module._global_module_registration_hooks:
                d["_modules"][name] = value
                return
        elif not isinstance(value, torch.Tensor):
            object.__setattr__(self, name, value)
            return
    _module_setattr(self, name, value)


@contextmanager
def empty_modules():
    """Modules built in this block live on the meta device and skip their random init: every tensor is replaced
    from the file, and init costs Python time even on meta (building the full-size UNet: 186 → 58 ms). The block
    is ``building()``'s: hold that around a whole load, and its set-up is paid once."""
    with building(), torch.device("meta"):
        yield


_building_lock = threading.Lock()
_building_depth = 0
_building_undo: ExitStack | None = None  # what the outermost block set up, to undo when the last one ends


@contextmanager
def building():
    """What building modules to fill from a file wants, process-wide for the duration. Blocks nest, in one thread
    or several: the first one in sets it up and the last one out takes it down.

    - no random init: transformers' ``no_init_weights`` patches ``torch.nn.init`` (and
      ``PreTrainedModel.init_weights``), and the torch layers' ``reset_parameters`` is a no-op (it still costs
      ~10 µs a layer with a no-op init), so the block should only build and fill modules;
    - attributes set through ``_first_setattr`` (UNet and VAE: 63 → 40 ms);
    - no cyclic garbage collection: a checkpoint's modules are ~57,000 tracked objects and no garbage, yet they
      trigger ~80 collections that walk them (6 ms of a 120 ms load).

    Patching a class attribute of ``nn.Module`` clears the type caches of its ~1,000 subclasses (~1.5 ms a block,
    set up and taken down), so a load holds one block around all its components."""
    global _building_depth, _building_undo
    with _building_lock:
        if _building_depth == 0:
            _building_undo = _set_up_building()
        _building_depth += 1
    try:
        yield
    finally:
        with _building_lock:
            _building_depth -= 1
            if _building_depth == 0:
                _building_undo.close()
                _building_undo = None


def _set_up_building() -> ExitStack:
    from transformers.initialization import no_init_weights

    with ExitStack() as undo:  # a set-up that fails half-way is undone here
        undo.enter_context(no_init_weights())
        undo.callback(setattr, nn.Module, "__setattr__", _module_setattr)
        nn.Module.__setattr__ = _first_setattr
        for cls in _INIT_LAYERS:
            reset = cls.__dict__.get("reset_parameters")  # None: inherited
            if reset is None:
                undo.callback(delattr, cls, "reset_parameters")
            else:
                undo.callback(setattr, cls, "reset_parameters", reset)
            cls.reset_parameters = _skip_reset
        if gc.isenabled():
            gc.disable()
            undo.callback(gc.enable)
        return undo.pop_all()


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
