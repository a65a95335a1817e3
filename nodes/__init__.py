"""latentgraph nodes: everything about diffusion (models, sampling, the node library); nothing about HTTP."""
