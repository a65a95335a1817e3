"""Torch modules of the latent-diffusion UNet families, SDXL's and shared by SD 1.x and 2.x (configs tell them
apart): UNet, VAE, text towers and tokenizer, SDXL's conditioning embedders, the MODEL value, configs."""
