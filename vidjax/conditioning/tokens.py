"""Captions -> token ids: transformers' AutoTokenizer folders (CLIP BPE, the toy world's vocabulary).

The one tokenizer entry point of training (the loader, null prompts) and inference (checkpoint
directories' tokenizer/ assets), so a caption gets the same ids in both.
"""

from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class PromptLoss:
  """What `tokenize` changes or drops of one caption (empty fields: nothing).

  unknown: the words a word-level vocabulary lacks, as written, each once in order; the tokenizer reads them as its
    unk token (a byte-level BPE such as CLIP's knows every word, so it has none).
  truncated: the text cut off past the context length.
  """

  unknown: tuple[str, ...] = ()
  truncated: str = ""

  def __bool__(self) -> bool:
    return bool(self.unknown or self.truncated)


def prompt_losses(captions: list[str], folder: str, max_tokens: int) -> list[PromptLoss]:
  """What `tokenize(captions, folder, max_tokens)` loses of each caption: one PromptLoss per caption."""
  with _TOKENIZER_LOCK:
    tokenizer = _tokenizer(folder)
    limit = max_tokens or tokenizer.model_max_length
    unk = tokenizer.unk_token_id
    losses = []
    for caption in captions:
      plain = tokenizer(caption, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
      ids, spans = plain["input_ids"], plain["offset_mapping"]
      special = len(tokenizer(caption, verbose=False)["input_ids"]) - len(ids)  # bos/eos the template adds
      # A caption that spells the unk token itself (CLIP's is its end-of-text token) asked for it: not a loss.
      unknown = [caption[a:b] for i, (a, b) in zip(ids, spans) if i == unk and caption[a:b] != tokenizer.unk_token]
      kept = max(limit - special, 0)
      truncated = caption[spans[kept][0]:].strip() if len(ids) > kept else ""
      losses.append(PromptLoss(unknown=tuple(dict.fromkeys(unknown)), truncated=truncated))
  return losses


def known_words(folder: str) -> list[str]:
  """The tokenizer's vocabulary without its special tokens, in id order (for messages that suggest words)."""
  with _TOKENIZER_LOCK:
    tokenizer = _tokenizer(folder)
    vocab = tokenizer.get_vocab()
    special = set(tokenizer.all_special_tokens)
  return [token for token, _ in sorted(vocab.items(), key=lambda item: item[1]) if token not in special]


@dataclasses.dataclass(frozen=True)
class Tokenizer:
  """A tokenizer folder at a fixed length L (0: its model_max_length); `tokenizer(captions)` -> int32 (B, L) ids."""

  folder: str
  max_tokens: int = 0

  def __call__(self, captions: list[str]) -> np.ndarray:
    return tokenize(list(captions), self.folder, self.max_tokens)

  def losses(self, captions: list[str]) -> list[PromptLoss]:
    """What calling it on `captions` changes or drops of each (`prompt_losses`)."""
    return prompt_losses(list(captions), self.folder, self.max_tokens)

  def known_words(self) -> list[str]:
    return known_words(self.folder)

  @property
  def context_length(self) -> int:
    """L, the length every encoding is padded or truncated to."""
    with _TOKENIZER_LOCK:
      return self.max_tokens or _tokenizer(self.folder).model_max_length
