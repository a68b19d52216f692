"""vidjax: structure- and content-guided video diffusion in JAX/Flax."""

__version__ = "0.1.0"
