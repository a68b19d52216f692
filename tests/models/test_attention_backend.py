"""The cuDNN attention backend, asked for where there is no GPU: a clear error, not cuDNN's runtime failure."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidjax.errors import ConfigError
from vidjax.models.attention import dot_product_attention


def test_cudnn_attention_off_gpu_raises_a_config_error_naming_the_setting_and_the_fix():
  q = jnp.asarray(np.random.default_rng(0).standard_normal((1, 5, 2, 8)), jnp.bfloat16)
  assert jax.default_backend() != "gpu"  # the suite runs on CPU (tests/conftest.py)
  with pytest.raises(ConfigError, match="attention_backend.*'cudnn'.*xla"):
    dot_product_attention(q, q, q, backend="cudnn")
  with pytest.raises(ConfigError, match="attention_backend"):  # the same under jit (raised at trace time)
    jax.jit(lambda x: dot_product_attention(x, x, x, backend="cudnn"))(q)
  # The portable default still answers.
  assert dot_product_attention(q, q, q, backend="xla").shape == q.shape
