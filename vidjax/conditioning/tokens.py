"""Captions -> token ids: transformers' AutoTokenizer folders (CLIP BPE, the toy world's vocabulary).

The one tokenizer entry point of training (the loader, null prompts) and inference (checkpoint
directories' tokenizer/ assets), so a caption gets the same ids in both.
"""

from __future__ import annotations

import functools
import threading

import numpy as np

from vidjax.errors import InputError

# Loading transformers lazily, or calling a fast tokenizer, from several threads at once fails.
_TOKENIZER_LOCK = threading.Lock()


@functools.lru_cache(maxsize=4)
def _tokenizer(folder: str):
  import transformers  # pylint: disable=g-import-not-at-top
  try:
    return transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
  except (OSError, ValueError) as e:
    raise InputError(folder, f"cannot load a tokenizer ({e})",
                     "set tokenizer_dir to a saved transformers tokenizer folder") from e


def tokenize(captions: list[str], folder: str, max_tokens: int) -> np.ndarray:
  """int32 (len(captions), L) ids, padded and truncated to L (0: the model_max_length)."""
  with _TOKENIZER_LOCK:
    tokenizer = _tokenizer(folder)
    ids = tokenizer(captions, padding="max_length", truncation=True,
                    max_length=max_tokens or tokenizer.model_max_length,
                    return_tensors="np")["input_ids"]
  return ids.astype(np.int32)
