"""SDXL torch modules: UNet, VAE, text encoders, conditioning embedders, configs."""
