"""The one way from conditioning to frames: the compiled Sampler, its cache, and frames as uint8."""
