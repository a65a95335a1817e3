"""latentgraph server: graphs, queues, caches, devices and HTTP; nothing about diffusion."""
