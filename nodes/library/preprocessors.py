"""Image preprocessors: the hint images ControlNets are trained on, made from pictures."""
from __future__ import annotations

from ..node import Input, Output, node
from ..types import IMAGE


@node(category="image/preprocessors", outputs=[Output(IMAGE)], display_name="Canny", version="1.0.0")
class Canny:
    """Canny edges (kornia's, as ComfyUI): white edges on black, for Canny ControlNets. Gradients between the two
    thresholds count where they connect to ones above the high threshold."""
    image: IMAGE = Input()
    low_threshold: float = Input(default=0.4, min=0.01, max=0.99, step=0.01)
    high_threshold: float = Input(default=0.8, min=0.01, max=0.99, step=0.01)

    def run(self, ctx):
        from kornia.filters import canny

        if self.low_threshold > self.high_threshold:
            raise ValueError(f"Canny: input 'low_threshold' ({self.low_threshold}) is above 'high_threshold' "
                             f"({self.high_threshold})")
        _, edges = canny(self.image[..., :3].movedim(-1, 1), self.low_threshold, self.high_threshold)
        return (edges.repeat(1, 3, 1, 1).movedim(1, -1),)
