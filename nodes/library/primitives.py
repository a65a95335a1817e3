"""Constant values as nodes (ComfyUI's `Primitive*` set) and whole-number arithmetic.

One constant feeding several inputs keeps a workflow's settings in one place (e.g. the step count shared by a
base and a refiner sampler)."""
from __future__ import annotations

import sys

from ..node import Input, Output, node
from ..types import BOOLEAN, FLOAT, INT, STRING

_BIG = sys.maxsize  # ComfyUI's bounds for free-form numbers


@node(category="utils/primitive", outputs=[Output(INT)], display_name="Int", version="1.0.0")
class PrimitiveInt:
    """A whole number."""
    value: int = Input(default=0, min=-_BIG, max=_BIG, control_after_generate=True)

    def run(self, ctx):
        return (self.value,)


@node(category="utils/primitive", outputs=[Output(FLOAT)], display_name="Float", version="1.0.0")
class PrimitiveFloat:
    """A real number."""
    value: float = Input(default=0.0, min=-_BIG, max=_BIG)

    def run(self, ctx):
        return (self.value,)


@node(category="utils/primitive", outputs=[Output(STRING)], display_name="String", version="1.0.0")
class PrimitiveString:
    """A line of text."""
    value: str = Input(default="")

    def run(self, ctx):
        return (self.value,)


@node(category="utils/primitive", outputs=[Output(STRING)], display_name="String (Multiline)", version="1.0.0")
class PrimitiveStringMultiline:
    """A block of text."""
    value: str = Input(default="", multiline=True)

    def run(self, ctx):
        return (self.value,)


@node(category="utils/primitive", outputs=[Output(BOOLEAN)], display_name="Boolean", version="1.0.0")
class PrimitiveBoolean:
    """On or off."""
    value: bool = Input(default=False)

    def run(self, ctx):
        return (self.value,)


_INT_OPS = {
    "add": lambda a, b: a + b,
    "subtract": lambda a, b: a - b,
    "multiply": lambda a, b: a * b,
    "divide": lambda a, b: a // b,  # floor division, like Python; b = 0 is reported as an error naming the node
    "modulo": lambda a, b: a % b,
    "min": min,
    "max": max,
}


@node(category="utils/math", outputs=[Output(INT)], display_name="Int Math", version="1.0.0")
class IntMath:
    """Combine two whole numbers: a (operation) b."""
    a: int = Input(default=0, min=-_BIG, max=_BIG)
    b: int = Input(default=0, min=-_BIG, max=_BIG)
    operation: str = Input(default="add", choices=list(_INT_OPS))

    def run(self, ctx):
        if self.operation in ("divide", "modulo") and self.b == 0:
            raise ZeroDivisionError(f"IntMath: cannot {self.operation} {self.a} by b = 0")
        return (_INT_OPS[self.operation](self.a, self.b),)
