"""A word-level tokenizer over the toy caption grammar, in the standard Hugging Face format.

The toy models read captions through the same code path as real ones (a transformers fast
tokenizer loaded from a folder), so the toy tokenizer is saved as `tokenizer.json` +
`tokenizer_config.json` + `special_tokens_map.json` and loads with
`transformers.PreTrainedTokenizerFast.from_pretrained(folder)`.

Ids: 0 <pad>, 1 <|startoftext|> (bos), 2 <|endoftext|> (eos), 3 <unk>, then `VOCAB_WORDS` in
order. Every encoding is `<|startoftext|> words... <|endoftext|>`; call the tokenizer with
`padding="max_length", truncation=True` to get exactly `max_length` ids (eos is kept on truncation).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import tokenizers
from tokenizers import models, normalizers, pre_tokenizers, processors

from vidjax.errors import atomic_path
from vidjax.toyworld.captions import VOCAB_WORDS

if TYPE_CHECKING:
  import transformers

PAD, BOS, EOS, UNK = "<pad>", "<|startoftext|>", "<|endoftext|>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
DEFAULT_MAX_LENGTH = 16


def _backend_tokenizer() -> tokenizers.Tokenizer:
  vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + VOCAB_WORDS)}
  tokenizer = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token=UNK))
  tokenizer.normalizer = normalizers.Lowercase()
  # Splits on whitespace and punctuation, so "a cube, a cone" -> a / cube / , / a / cone.
  tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
  tokenizer.post_processor = processors.TemplateProcessing(
      single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])])
  return tokenizer


def build_tokenizer(max_length: int = DEFAULT_MAX_LENGTH) -> transformers.PreTrainedTokenizerFast:
  """The toy tokenizer; `max_length` is its `model_max_length` (padding and truncation length)."""
  # Imported here: transformers takes seconds to import and renderers (data workers) never need it.
  import transformers  # pylint: disable=g-import-not-at-top
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=_backend_tokenizer(),
      pad_token=PAD,
      bos_token=BOS,
      eos_token=EOS,
      unk_token=UNK,
      model_max_length=max_length,
      padding_side="right",
  )


def save_tokenizer(folder: str | os.PathLike, max_length: int = DEFAULT_MAX_LENGTH) -> str:
  """Writes the toy tokenizer to `folder` atomically (replacing it) and returns the path."""
  with atomic_path(folder, is_dir=True) as tmp:
    build_tokenizer(max_length).save_pretrained(tmp)
  return os.fspath(folder)
