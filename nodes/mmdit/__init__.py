"""Torch modules of the MMDiT family (SD3; SD3.5's variants fit its config): the multimodal diffusion transformer,
the T5 text tower and tokenizer, SD3's three-encoder text conditioning and the MODEL value."""
