"""DPT's configuration and backbones: the ViT (DPT-Large) and the BiT ResNet stem (DPT-Hybrid).

Module names follow transformers' `DPTForDepthEstimation` state-dict keys (dpt/encoder/layer_3/...);
`vidjax.convert.hf_dpt` renames the few places where we are flatter (the ViT attention takes the
shared `Attention`'s names; BiT's `bit.encoder.stages.1.layers.0` is `stages_1_layers_0`). Layout is
channels-last: images (N, H, W, C), tokens (N, 1 + h*w, D), CLS first, patches in row-major order.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vidjax import interpolate
from vidjax.errors import ConfigError
from vidjax.models import layers
from vidjax.models.attention import Attention

ACTIVATIONS = {"gelu": lambda x: nn.gelu(x, approximate=False), "gelu_new": nn.gelu, "relu": nn.relu,
               "silu": nn.silu, "swish": nn.silu}
# transformers' DPTConfig fills an absent or partial hybrid backbone_config with these over BitConfig's defaults.
_HF_BIT_DEFAULTS = dict(embedding_size=64, hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 9], num_groups=32,
                        hidden_act="relu", global_padding="same", layer_type="bottleneck",
                        embedding_dynamic_padding=True, output_stride=32, width_factor=1,
                        out_features=["stage1", "stage2", "stage3"])


def _pair(value) -> tuple[int, int]:
  return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


def _check_activation(name: str, where: str):
  if name not in ACTIVATIONS:
    raise ConfigError(where, f"activation {name!r} is not supported", f"use one of {sorted(ACTIVATIONS)}")


def make_div(value: float, divisor: int = 8) -> int:
  """BiT's channel rounding (transformers' `make_div`): nearest multiple of 8, never 10% below."""
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * value else rounded


@dataclasses.dataclass(frozen=True)
class BitConfig:
  """The BiT stem of DPT-Hybrid: a 'bottleneck' (ResNet v1.5) BiT with 'SAME' padding, three stages."""

  embedding_size: int = 64
  hidden_sizes: tuple[int, ...] = (256, 512, 1024)
  depths: tuple[int, ...] = (3, 4, 9)
  num_groups: int = 32
  hidden_act: str = "relu"
  embedding_dynamic_padding: bool = True

  def __post_init__(self):
    _check_activation(self.hidden_act, "BitConfig.hidden_act")

  @property
  def stage_channels(self) -> tuple[int, ...]:
    return tuple(make_div(c) for c in self.hidden_sizes)

  @classmethod
  def from_hf(cls, config: dict[str, Any] | None) -> BitConfig:
    """From DPT's `backbone_config` dict, completed with transformers' DPT-hybrid defaults."""
    c = {**_HF_BIT_DEFAULTS, **(config or {})}
    stages = len(c["depths"])
    # Each stage after the first halves the size; output_stride caps that with dilation, unported.
    unsupported = {"layer_type": c["layer_type"] != "bottleneck",
                   "global_padding": str(c["global_padding"]).upper() != "SAME",
                   "width_factor": c["width_factor"] != 1,
                   "output_stride": 4 * 2 ** (stages - 1) > c["output_stride"],
                   "out_features": list(c["out_features"]) != [f"stage{i + 1}" for i in range(stages)] or stages != 3}
    bad = [k for k, v in unsupported.items() if v]
    if bad:
      raise ConfigError("DPT backbone_config", f"unsupported BiT settings {', '.join(bad)}",
                        "vidjax ports DPT-Hybrid's BiT: bottleneck layers, SAME padding, 3 stages all returned")
    return cls(embedding_size=c["embedding_size"], hidden_sizes=tuple(c["hidden_sizes"][:stages]),
               depths=tuple(c["depths"]), num_groups=c["num_groups"], hidden_act=c["hidden_act"],
               embedding_dynamic_padding=bool(c["embedding_dynamic_padding"]))


@dataclasses.dataclass(frozen=True)
class DPTConfig:
  """Architecture of a DPT depth model. Defaults are MiDaS v3 DPT-Large (Intel/dpt-large)."""

  hidden_size: int = 1024
  num_hidden_layers: int = 24
  num_attention_heads: int = 16
  intermediate_size: int = 4096
  hidden_act: str = "gelu"
  layer_norm_eps: float = 1e-12
  image_size: tuple[int, int] = (384, 384)  # training size: the position embeddings' grid
  patch_size: int = 16
  num_channels: int = 3
  qkv_bias: bool = True
  backbone_out_indices: tuple[int, ...] = (5, 11, 17, 23)  # ViT layers whose outputs feed the neck
  readout_type: str = "project"  # CLS token into patch tokens: 'project' | 'add' | 'ignore'
  reassemble_factors: tuple[float, ...] = (4, 2, 1, 0.5)
  neck_hidden_sizes: tuple[int, ...] = (256, 512, 1024, 1024)
  fusion_hidden_size: int = 256
  head_in_index: int = -1
  use_bias_in_fusion_residual: bool = True
  add_projection: bool = False  # a 3x3 conv + ReLU before the head (DINOv2-DPT), 256 channels
  bit: BitConfig | None = None  # set: DPT-Hybrid, whose first two neck inputs are BiT stages 1 and 2
  attention_backend: str = "xla"
  dtype: str = "float32"  # compute dtype
  param_dtype: str = "float32"  # storage dtype

  def __post_init__(self):
    _check_activation(self.hidden_act, "DPTConfig.hidden_act")
    if self.hidden_size % self.num_attention_heads:
      raise ConfigError("DPTConfig", f"hidden_size {self.hidden_size} does not divide into "
                        f"{self.num_attention_heads} heads", "choose a hidden size divisible by the head count")
    if self.readout_type not in ("project", "add", "ignore") or (self.is_hybrid and self.readout_type != "project"):
      raise ConfigError("DPTConfig.readout_type", f"{self.readout_type!r} is not supported",
                        "use 'project' (the only readout DPT-Hybrid has), 'add' or 'ignore'")
    stages = len(self.neck_hidden_sizes)
    if len(self.reassemble_factors) != stages or len(self.backbone_out_indices) != stages:
      raise ConfigError("DPTConfig", "backbone_out_indices, reassemble_factors and neck_hidden_sizes differ in "
                        "length", "give one entry per neck stage in each")
    if max(self.backbone_out_indices) >= self.num_hidden_layers:
      raise ConfigError("DPTConfig.backbone_out_indices", f"{self.backbone_out_indices} name layers beyond "
                        f"{self.num_hidden_layers}", "pick indices below num_hidden_layers")

  @property
  def is_hybrid(self) -> bool:
    return self.bit is not None

  def kw(self) -> dict[str, Any]:
    return dict(dtype=jnp.dtype(self.dtype), param_dtype=jnp.dtype(self.param_dtype))

  @classmethod
  def from_hf(cls, config: dict[str, Any], **overrides) -> DPTConfig:
    """From a transformers `DPTConfig` config.json dict (absent keys take transformers' defaults)."""
    get = lambda key, default: default if config.get(key) is None else config[key]
    hybrid = bool(config.get("is_hybrid", False))
    unsupported = {"model_type": config.get("model_type", "dpt") != "dpt",
                   "backbone": not hybrid and (config.get("backbone_config") or config.get("backbone")),
                   "use_batch_norm_in_fusion_residual": config.get("use_batch_norm_in_fusion_residual", False),
                   "neck_ignore_stages": hybrid and list(get("neck_ignore_stages", [0, 1])) != [0, 1]}
    bad = [k for k, v in unsupported.items() if v]
    if bad:
      raise ConfigError("DPT config.json", f"unsupported settings {', '.join(bad)}",
                        "vidjax ports DPT with its ViT (dpt-large) or ViT-hybrid (dpt-hybrid-midas) backbone")
    bias = config.get("use_bias_in_fusion_residual")
    return cls(hidden_size=get("hidden_size", 768), num_hidden_layers=get("num_hidden_layers", 12),
               num_attention_heads=get("num_attention_heads", 12), intermediate_size=get("intermediate_size", 3072),
               hidden_act=get("hidden_act", "gelu"), layer_norm_eps=get("layer_norm_eps", 1e-12),
               image_size=_pair(get("image_size", 384)), patch_size=_pair(get("patch_size", 16))[0],
               num_channels=get("num_channels", 3), qkv_bias=get("qkv_bias", True),
               backbone_out_indices=tuple(get("backbone_out_indices", (2, 5, 8, 11))),
               readout_type=get("readout_type", "project"),
               reassemble_factors=tuple(get("reassemble_factors", (4, 2, 1, 0.5))),
               neck_hidden_sizes=tuple(get("neck_hidden_sizes", (96, 192, 384, 768))),
               fusion_hidden_size=get("fusion_hidden_size", 256), head_in_index=get("head_in_index", -1),
               use_bias_in_fusion_residual=True if bias is None else bool(bias),
               add_projection=bool(get("add_projection", False)),
               bit=BitConfig.from_hf(config.get("backbone_config")) if hybrid else None, **overrides)


class StandardizedConv(nn.Module):
  """BiT's bias-free conv with a weight-standardised kernel.

  Each output filter is scaled to zero mean and unit (biased) variance over its taps and inputs
  (eps 1e-8) before convolving. 'SAME' padding is TensorFlow's (the odd pad at the end), which is
  what transformers' dynamic padding computes for BiT's strided convs.
  """

  features: int
  kernel_size: int
  strides: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (N, H, W, Cin) -> (N, ceil(H / strides), ceil(W / strides), features)."""
    k = self.kernel_size
    init = layers.partitioned(nn.initializers.lecun_normal(), ("conv_h", "conv_w", "conv_in", "conv_out"))
    kernel = self.param("kernel", init, (k, k, x.shape[-1], self.features), self.param_dtype)
    kernel = kernel.astype(jnp.float32)  # standardise in float32 whatever the storage dtype
    mean = kernel.mean(axis=(0, 1, 2), keepdims=True)
    kernel = (kernel - mean) * jax.lax.rsqrt(kernel.var(axis=(0, 1, 2), keepdims=True) + 1e-8)
    return jax.lax.conv_general_dilated(x.astype(self.dtype), kernel.astype(self.dtype), (self.strides,) * 2,
                                        "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


class BitBottleneck(nn.Module):
  """ResNet v1.5 bottleneck (stride on the 3x3), GroupNorm after each conv, activation after the sum.

  The first layer of a stage projects the shortcut with a strided 1x1 conv + GroupNorm
  (`downsample_conv`, `downsample_norm`).
  """

  config: DPTConfig
  features: int
  strides: int
  downsample: bool

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (N, H, W, Cin) -> (N, ceil(H / strides), ceil(W / strides), features)."""
    bit, kw = self.config.bit, self.config.kw()
    act = ACTIVATIONS[bit.hidden_act]
    norm = lambda name: layers.group_norm(bit.num_groups, 1e-5, name=name, **kw)
    conv = lambda features, k, name, strides=1: StandardizedConv(features, k, strides, name=name, **kw)
    mid = make_div(self.features * 0.25)
    shortcut = x
    if self.downsample:
      shortcut = norm("downsample_norm")(conv(self.features, 1, "downsample_conv", self.strides)(x))
    h = act(norm("norm1")(conv(mid, 1, "conv1")(x)))
    h = act(norm("norm2")(conv(mid, 3, "conv2", self.strides)(h)))
    h = norm("norm3")(conv(self.features, 1, "conv3")(h))
    return act(h + shortcut)


class BitBackbone(nn.Module):
  """BiT stem and stages: (N, H, W, C) -> the three stage outputs, at strides 4, 8 and 16."""

  config: DPTConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> list[jax.Array]:
    bit, kw = self.config.bit, self.config.kw()
    act = ACTIVATIONS[bit.hidden_act]
    x = StandardizedConv(bit.embedding_size, 7, 2, name="embedder_convolution", **kw)(x)
    x = act(layers.group_norm(bit.num_groups, 1e-5, name="embedder_norm", **kw)(x))
    if bit.embedding_dynamic_padding:  # TF-'SAME' zero padding; zeros are neutral after the ReLU
      pads = jax.lax.padtype_to_pads(x.shape[1:3], (3, 3), (2, 2), "SAME")
      x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
    features = []
    for s, (depth, channels) in enumerate(zip(bit.depths, bit.stage_channels)):
      for i in range(depth):
        x = BitBottleneck(self.config, channels, strides=2 if s > 0 and i == 0 else 1, downsample=i == 0,
                          name=f"stages_{s}_layers_{i}")(x)
      features.append(x)
    return features


def resize_position_embeddings(position_embeddings: jax.Array, grid: tuple[int, int]) -> jax.Array:
  """(1, 1 + g*g, D) embeddings of a square training grid -> (1, 1 + h*w, D) for grid (h, w).

  The CLS entry is kept; the patch grid is resampled bilinearly with half-pixel centres, as
  transformers' `_resize_pos_embed` does (so a non-square grid works too).
  """
  _, length, dim = position_embeddings.shape
  old = int(round((length - 1) ** 0.5))
  patches = position_embeddings[:, 1:].reshape(1, old, old, dim)
  patches = interpolate.resize(patches, grid, method="bilinear", align_corners=False)
  return jnp.concatenate([position_embeddings[:, :1], patches.reshape(1, grid[0] * grid[1], dim)], axis=1)


class ViTEmbeddings(nn.Module):
  """Patch (or BiT-feature) embeddings, CLS token and position embeddings resized to the input grid."""

  config: DPTConfig

  @nn.compact
  def __call__(self, pixels: jax.Array) -> tuple[jax.Array, tuple[int, int], list[jax.Array]]:
    """pixels: (N, H, W, C) normalised images.

    Returns:
      tokens (N, 1 + h*w, D); the patch grid (h, w); for DPT-Hybrid the BiT stage-1 and stage-2
      maps (N, H/4, W/4, C1) and (N, H/8, W/8, C2) that feed the neck directly, else [].
    """
    c, kw = self.config, self.config.kw()
    p = c.patch_size
    residuals = []
    if c.is_hybrid:
      *residuals, features = BitBackbone(c, name="backbone")(pixels)
      x = layers.conv(c.hidden_size, (1, 1), padding="VALID", name="projection", **kw)(features)
    else:
      x = layers.conv(c.hidden_size, (p, p), strides=p, padding="VALID", name="patch_embeddings", **kw)(pixels)
    n, h, w, d = x.shape
    init = layers.partitioned(nn.initializers.normal(0.02), (None, None, "embed"))
    cls_token = self.param("cls_token", init, (1, 1, d), kw["param_dtype"])
    positions = (c.image_size[0] // p) * (c.image_size[1] // p) + 1
    position_embeddings = self.param("position_embeddings", init, (1, positions, d), kw["param_dtype"])
    tokens = jnp.concatenate([jnp.broadcast_to(cls_token.astype(x.dtype), (n, 1, d)), x.reshape(n, h * w, d)], 1)
    return tokens + resize_position_embeddings(position_embeddings.astype(x.dtype), (h, w)), (h, w), residuals


class ViTLayer(nn.Module):
  """Pre-norm transformer layer: x + attn(LN(x)), then h + output(act(intermediate(LN(h))))."""

  config: DPTConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (N, L, D) -> (N, L, D)."""
    c, kw = self.config, self.config.kw()
    heads = c.num_attention_heads
    h = layers.layer_norm(c.layer_norm_eps, name="layernorm_before", **kw)(x)
    x = x + Attention(heads, c.hidden_size // heads, qkv_bias=c.qkv_bias, backend=c.attention_backend,
                      name="attention", **kw)(h)
    h = layers.layer_norm(c.layer_norm_eps, name="layernorm_after", **kw)(x)
    h = layers.dense(c.intermediate_size, names=("embed", "mlp"), name="intermediate", **kw)(h)
    h = ACTIVATIONS[c.hidden_act](h)
    return x + layers.dense(c.hidden_size, names=("mlp", "embed"), name="output", **kw)(h)


class ViTEncoder(nn.Module):
  """The transformer layers; returns the outputs of the layers the neck reads."""

  config: DPTConfig

  @nn.compact
  def __call__(self, tokens: jax.Array, hooks: Sequence[int]) -> list[jax.Array]:
    """tokens: (N, L, D) -> [(N, L, D) output of layer i for i in hooks]."""
    outputs = []
    for i in range(self.config.num_hidden_layers):
      tokens = ViTLayer(self.config, name=f"layer_{i}")(tokens)
      outputs.append(tokens)
    return [outputs[i] for i in hooks]


class ViT(nn.Module):
  """DPT's backbone (`dpt` in transformers): embeddings and encoder, read at the configured layers."""

  config: DPTConfig

  @nn.compact
  def __call__(self, pixels: jax.Array) -> tuple[list[jax.Array], list[jax.Array], tuple[int, int]]:
    """pixels: (N, H, W, C) -> (BiT maps, [(N, 1 + h*w, D)] hooked layer outputs, grid (h, w)).

    DPT-Hybrid's first two neck inputs are BiT stages, so only its last two hooks read the ViT.
    """
    c = self.config
    tokens, grid, residuals = ViTEmbeddings(c, name="embeddings")(pixels)
    hooks = c.backbone_out_indices[2:] if c.is_hybrid else c.backbone_out_indices
    return residuals, ViTEncoder(c, name="encoder")(tokens, hooks), grid
