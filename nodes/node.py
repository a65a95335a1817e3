"""The one way to declare a node.

A node is a class decorated with ``@node``. Its inputs are class attributes annotated with their type
and given an ``Input(...)`` declaration; its outputs are listed once in the decorator; its work is one
method, ``run(self, ctx)``, which reads the inputs as attributes and returns the outputs as a tuple
(or a ``Result`` when it also has something to show in the UI).

    @node(category="image", outputs=[Output(IMAGE)], version="1.0.0")
    class ImageInvert:
        '''Invert the colours of an image.'''
        image: IMAGE = Input(description="the picture to invert")

        def run(self, ctx):
            return (1.0 - self.image,)

That declaration alone drives validation (``Input.coerce``), the ComfyUI-shaped schema that the API and
the canvas serve (``NodeSpec.schema``), and the call (``NodeSpec.call``). Nothing here knows HTTP.

Every node states its version (semver). When its inputs change, the new version declares how workflows saved
with an older one are read (``Migration``: renamed inputs, a value for a new input, mapped values); loading a
workflow applies the steps it needs (server/migrations.py).
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Sequence

from .types import SocketType, socket_type_of

_MISSING = object()


class InputError(ValueError):
    """A value that does not fit an input. ``kind`` is a ComfyUI error type name."""

    def __init__(self, kind: str, message: str, details: str = ""):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.details = details


class Interrupted(Exception):
    """Raised inside a node when the run was cancelled; the executor reports it as an interruption."""


@dataclass(frozen=True)
class Input:
    """One input of a node. Everything a widget, a validator and a client need to know about it."""

    default: Any = _MISSING
    description: str = ""
    min: float | None = None
    max: float | None = None
    step: float | None = None
    round: float | bool | None = None
    choices: Sequence[str] | Callable[["Environment"], Sequence[str]] | None = None
    # a value outside `choices` that is still valid (LoadImage's annotated "name.png [output]"); not in the schema
    also_accepts: Callable[[str, "Environment"], bool] | None = None
    multiline: bool = False
    optional: bool = False
    link_only: bool = False  # a widget-typed input that only accepts a link (ComfyUI `forceInput`)
    control_after_generate: bool = False  # seeds: the canvas offers fixed/increment/randomize
    image_upload: bool = False
    dynamic_prompts: bool = False
    display: str | None = None  # "slider" / "number" hint for the canvas
    label_on: str | None = None
    label_off: str | None = None
    # the value names a file in <models>/<model_folder> (or in the first of several folders holding it, as ComfyUI
    # keeps text_encoders/ and clip/): outputs record its SHA-256
    model_folder: str | tuple[str, ...] | None = None
    # filled in by @node from the annotation and attribute name
    name: str = ""
    type: SocketType | None = None

    # -- what kind of input --------------------------------------------------------------------
    @property
    def is_combo(self) -> bool:
        return self.choices is not None

    @property
    def is_widget(self) -> bool:
        """True when the value can be typed on the node (not only linked)."""
        return (self.is_combo or self.type.is_primitive) and not self.link_only

    @property
    def required(self) -> bool:
        return not self.optional

    @property
    def has_default(self) -> bool:
        return self.default is not _MISSING

    def options(self, env: "Environment | None" = None) -> list[str]:
        choices = self.choices
        if callable(choices):
            choices = choices(env or Environment())
        return list(choices or [])

    # -- validation -----------------------------------------------------------------------------
    def coerce(self, value: Any, env: "Environment | None" = None) -> Any:
        """Check and convert a constant value; raises InputError with a ComfyUI error type."""
        if self.choices is not None:
            options = self.options(env)
            if not isinstance(value, str) or (value not in options and not (
                    self.also_accepts is not None and self.also_accepts(value, env or Environment()))):
                shown = options if len(options) <= 20 else f"(list of length {len(options)})"
                raise InputError("value_not_in_list", f"Value not in list: {self.name}: {value!r} not in {shown}")
            return value
        t = self.type
        kind = t.name  # by name: the socket types' dataclass __eq__ builds tuples (validation's hottest path)
        try:
            if kind == "INT":
                if isinstance(value, bool):
                    raise TypeError
                if isinstance(value, float):
                    if not value.is_integer():
                        raise TypeError
                value = int(value)
            elif kind == "FLOAT":
                if isinstance(value, bool):
                    raise TypeError
                value = float(value)
                if math.isnan(value):
                    raise TypeError
            elif kind == "STRING":
                if not isinstance(value, str):
                    raise TypeError
            elif kind == "BOOLEAN":
                if isinstance(value, str) and value.lower() in ("true", "false"):
                    value = value.lower() == "true"
                if not isinstance(value, bool):
                    raise TypeError
            else:
                raise InputError("bad_linked_input", f"{self.name} takes a {t.name} link, got a constant {value!r}")
        except (TypeError, ValueError, OverflowError):
            raise InputError("invalid_input_type", f"Failed to convert an input value to a {t.name} value: {self.name}, {value!r}") from None
        if self.min is not None and value < self.min:
            raise InputError("value_smaller_than_min", f"Value {value} smaller than min of {self.min}: {self.name}")
        if self.max is not None and value > self.max:
            raise InputError("value_bigger_than_max", f"Value {value} bigger than max of {self.max}: {self.name}")
        return value

    # -- schema ---------------------------------------------------------------------------------
    def spec(self, env: "Environment | None" = None) -> list:
        """ComfyUI `/object_info` input spec: ``[TYPE, options]``."""
        opts: dict[str, Any] = {}
        if self.has_default:
            opts["default"] = self.default
        for key, val in (("min", self.min), ("max", self.max), ("step", self.step), ("round", self.round),
                         ("display", self.display), ("label_on", self.label_on), ("label_off", self.label_off)):
            if val is not None:
                opts[key] = val
        if self.multiline:
            opts["multiline"] = True
        if self.dynamic_prompts:
            opts["dynamicPrompts"] = True
        if self.link_only:
            opts["forceInput"] = True
        if self.control_after_generate:
            opts["control_after_generate"] = True
        if self.image_upload:
            opts["image_upload"] = True
        if self.description:
            opts["tooltip"] = self.description
        head: Any = self.options(env) if self.is_combo else self.type.name
        return [head, opts] if opts else [head]


@dataclass(frozen=True)
class Output:
    type: SocketType
    name: str = ""
    description: str = ""

    @property
    def label(self) -> str:
        return self.name or self.type.name


@dataclass(frozen=True)
class Migration:
    """How a node's inputs changed when it reached version `to`; workflows saved before `to` are read through it.

    ``renamed``: old input name → new name. ``added``: a new input → the value that keeps what older workflows
    did (not necessarily the new default). ``values``: input → {old value: new value}, for renamed choices.
    Each step is safe on a workflow that already has the new shape (an API client writing today's names without
    a version): a rename only moves an old name that is present, an added input keeps a value it already has."""

    to: str
    renamed: dict[str, str] = field(default_factory=dict)
    added: dict[str, Any] = field(default_factory=dict)
    values: dict[str, dict] = field(default_factory=dict)

    def apply(self, inputs: dict[str, Any]) -> list[str]:
        """Change `inputs` (name → constant or link) in place; what changed, in words."""
        changes = []
        for old, new in self.renamed.items():
            if old in inputs and new not in inputs:
                inputs[new] = inputs.pop(old)
                changes.append(f"input '{old}' renamed to '{new}'")
        for name, value in self.added.items():
            if name not in inputs:
                inputs[name] = value
                changes.append(f"input '{name}' added as {value!r}")
        for name, mapping in self.values.items():
            value = inputs.get(name)
            if isinstance(value, (str, int, float, bool)) and value in mapping:
                inputs[name] = mapping[value]
                changes.append(f"'{name}' {value!r} is now {mapping[value]!r}")
        return changes


def parse_version(text: Any) -> tuple[int, int, int]:
    """'MAJOR.MINOR.PATCH' → a tuple that compares in version order; ValueError for anything else."""
    parts = text.split(".") if isinstance(text, str) else ()
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"{text!r} is not a version of the form MAJOR.MINOR.PATCH")
    return int(parts[0]), int(parts[1]), int(parts[2])


@dataclass
class Result:
    """What an output node returns: its socket outputs plus a UI dict (e.g. ``{"images": [...]}``)."""

    outputs: tuple = ()
    ui: dict | None = None


@dataclass
class Environment:
    """Where files live; used for dynamic choices (model and input file lists) and by loaders."""

    models_dir: str | None = None
    input_dir: str | None = None
    output_dir: str | None = None
    temp_dir: str | None = None

    def model_path(self, folder: str | tuple[str, ...], name: str) -> str:
        """Where the model `name` (a file or a diffusers folder) in <models>/<folder> lives; ValueError for a name
        that escapes the folder. The check is on the name, not the resolved path: people symlink their model files
        and folders in from elsewhere, and a link the owner placed is meant to be followed. Given several folders
        (one kind of model under ComfyUI's new and old names), the first that holds `name`, else the first."""
        if not isinstance(folder, str):
            paths = [self.model_path(f, name) for f in folder]
            return next((p for p in paths if os.path.exists(p)), paths[0])
        root = os.path.abspath(os.path.join(self.models_dir or "models", folder))
        path = os.path.normpath(os.path.join(root, name))
        if os.path.isabs(name) or os.path.commonpath([root, path]) != root:
            raise ValueError(f"{name!r} points outside {root}")
        return path


class Context:
    """What a running node may use besides its inputs. The executor subclasses or fills it in."""

    def __init__(self, node_id: str = "", env: Environment | None = None, prompt: dict | None = None,
                 extra_pnginfo: dict | None = None, progress: Callable[..., None] | None = None,
                 interrupted: Callable[[], bool] | None = None, resources: Any = None):
        self.node_id = node_id
        self.env = env or Environment()
        self.prompt = prompt or {}
        self.extra_pnginfo = extra_pnginfo or {}
        self._progress = progress
        self._interrupted = interrupted
        self.resources = resources  # device / model residency service (server.models); None = plain CPU

    def progress(self, value: int, total: int, preview: Any = None) -> None:
        """Report step `value` of `total` (and optionally a preview image); also a cancellation point."""
        self.check_interrupted()
        if self._progress is not None:
            self._progress(self.node_id, value, total, preview)

    def check_interrupted(self) -> None:
        if self._interrupted is not None and self._interrupted():
            raise Interrupted()


@dataclass
class NodeSpec:
    """A node class's declaration, read once from its decorator and annotations."""

    cls: type
    type_name: str
    display_name: str
    category: str
    description: str
    version: str
    inputs: dict[str, Input]
    outputs: tuple[Output, ...]
    output_node: bool
    hidden: dict[str, str]
    deprecated: bool = False
    migrations: tuple[Migration, ...] = ()  # oldest first
    model_inputs: tuple[str, ...] = ()      # inputs naming model files (Input.model_folder)

    @property
    def widget_inputs(self) -> list[Input]:
        return [i for i in self.inputs.values() if i.is_widget]

    def schema(self, env: Environment | None = None) -> dict:
        """The ComfyUI `/object_info` entry for this node."""
        required = {n: i.spec(env) for n, i in self.inputs.items() if i.required}
        optional = {n: i.spec(env) for n, i in self.inputs.items() if i.optional}
        inputs: dict[str, Any] = {"required": required}
        if optional:
            inputs["optional"] = optional
        if self.hidden:
            inputs["hidden"] = dict(self.hidden)
        return {
            "input": inputs,
            "input_order": {"required": list(required), **({"optional": list(optional)} if optional else {})},
            "output": [o.type.name for o in self.outputs],
            "output_is_list": [False for _ in self.outputs],
            "output_name": [o.label for o in self.outputs],
            "output_tooltips": [o.description for o in self.outputs],
            "name": self.type_name,
            "display_name": self.display_name,
            "description": self.description,
            "python_module": self.cls.__module__,
            "category": self.category,
            "output_node": self.output_node,
            "deprecated": self.deprecated,
            "experimental": False,
            "api_node": False,
            "version": self.version,
        }

    def call(self, ctx: Context, values: dict[str, Any]) -> Result:
        """Run the node on already-validated input values."""
        instance = self.cls.__new__(self.cls)
        for name, inp in self.inputs.items():
            setattr(instance, name, values.get(name, inp.default if inp.has_default else None))
        out = instance.run(ctx)
        if isinstance(out, Result):
            result = out
        elif out is None:
            result = Result(())
        elif isinstance(out, tuple):
            result = Result(out)
        else:
            result = Result((out,))
        if len(result.outputs) != len(self.outputs):
            raise TypeError(f"{self.type_name} returned {len(result.outputs)} outputs, declares {len(self.outputs)}")
        return result

    def fingerprint(self, values: dict[str, Any], env: Environment) -> Any:
        """Extra cache-key material for nodes whose output depends on the outside world (files).

        A node class may define ``fingerprint(cls, values, env)``; by default the inputs say it all."""
        fn = getattr(self.cls, "fingerprint", None)
        return fn(values, env) if fn is not None else None

    def model_files(self, values: dict[str, Any], env: Environment) -> dict[str, str]:
        """{input name: path} of the model files these constant values name (names that escape their folder are
        left out: running the node reports them)."""
        paths = {}
        for name in self.model_inputs:
            value = values.get(name)
            if isinstance(value, str):
                try:
                    paths[name] = env.model_path(self.inputs[name].model_folder, value)
                except ValueError:
                    pass
        return paths

    def steps_since(self, saved: str | None) -> list[Migration]:
        """The migrations a workflow saved with version `saved` needs; None means as first published (all)."""
        if saved is None:
            return list(self.migrations)
        since = parse_version(saved)
        return [m for m in self.migrations if parse_version(m.to) > since]


REGISTRY: dict[str, NodeSpec] = {}


def node(*, category: str, version: str | None = None, outputs: Iterable[Output] = (), name: str | None = None,
         display_name: str | None = None, output_node: bool = False, hidden: dict[str, str] | None = None,
         deprecated: bool = False, migrations: Iterable[Migration] = ()) -> Callable[[type], type]:
    """Declare a node class (see the module docstring) and register it under `name` (default: class name).
    `version` is required: saved workflows record it, and `migrations` say how older ones are read."""

    def wrap(cls: type) -> type:
        annotations = inspect.get_annotations(cls, eval_str=True)
        inputs: dict[str, Input] = {}
        for attr, ann in annotations.items():
            decl = cls.__dict__.get(attr, _MISSING)
            if not isinstance(decl, Input):
                continue
            inputs[attr] = dataclasses.replace(decl, name=attr, type=socket_type_of(ann))
        type_name = name or cls.__name__
        steps = tuple(migrations)
        _check_version(type_name, version, steps, inputs)
        doc = inspect.getdoc(cls) or ""
        spec = NodeSpec(cls=cls, type_name=type_name, display_name=display_name or _spaced(type_name),
                        category=category, description=doc, version=version, inputs=inputs,
                        outputs=tuple(outputs), output_node=output_node, hidden=dict(hidden or {}),
                        deprecated=deprecated, migrations=steps,
                        model_inputs=tuple(n for n, i in inputs.items() if i.model_folder))
        if type_name in REGISTRY and REGISTRY[type_name].cls is not cls:
            raise ValueError(f"node type {type_name!r} declared twice ({REGISTRY[type_name].cls} and {cls})")
        REGISTRY[type_name] = spec
        cls.spec = spec  # type: ignore[attr-defined]
        return cls

    return wrap


def _check_version(type_name: str, version: Any, steps: tuple[Migration, ...], inputs: dict[str, Input]) -> None:
    """Refuse, at import, a node without a semver version or with migrations that cannot lead to its inputs."""
    if version is None:
        raise TypeError(f"@node {type_name}: declare its version, e.g. version=\"1.0.0\" (saved workflows record it)")
    try:
        current = parse_version(version)
        tos = [parse_version(step.to) for step in steps]
    except ValueError as exc:
        raise TypeError(f"@node {type_name}: {exc}") from None
    if tos != sorted(set(tos)) or (tos and tos[-1] > current):
        raise TypeError(f"@node {type_name}: migrations must go to rising versions up to {version}")
    for i, step in enumerate(steps):  # each new name is an input now, or is renamed again by a later step
        later = {old for s in steps[i + 1:] for old in s.renamed}
        for new in [*step.renamed.values(), *step.added, *step.values]:
            if new not in inputs and new not in later:
                raise TypeError(f"@node {type_name}: migration to {step.to} names input {new!r}, which it lacks")


def _spaced(name: str) -> str:
    out = []
    for i, ch in enumerate(name):
        if i and ch.isupper() and not name[i - 1].isupper():
            out.append(" ")
        out.append(ch)
    return "".join(out)


def load_builtin_nodes() -> dict[str, NodeSpec]:
    """Import the built-in node modules (registration happens at import) and return the registry."""
    import importlib
    import pkgutil

    from . import library

    for mod in pkgutil.iter_modules(library.__path__):
        importlib.import_module(f"{library.__name__}.{mod.name}")
    return REGISTRY
