"""Torch modules only: the BeatGAN generator and discriminator."""

from sibeatgan.models.beatgan import (
    Decoder,
    Discriminator,
    DiscriminatorOutput,
    Encoder,
    Generator,
    GeneratorOutput,
    final_kernel,
    init_spec,
    init_weights,
)

__all__ = [
    "Decoder",
    "Discriminator",
    "DiscriminatorOutput",
    "Encoder",
    "Generator",
    "GeneratorOutput",
    "final_kernel",
    "init_spec",
    "init_weights",
]
