"""What tokenizing a caption changes or drops: unknown words of a word-level vocabulary, text past the context."""

import json
import string

import numpy as np
import pytest

from vidjax.conditioning import tokens
from vidjax.toyworld import save_tokenizer


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
  return save_tokenizer(tmp_path_factory.mktemp("toy") / "tokenizer")


@pytest.fixture(scope="module")
def clip_bpe(tmp_path_factory):
  """A tiny CLIP BPE whose unk token is its end-of-text token, as CLIP's own."""
  folder = tmp_path_factory.mktemp("bpe")
  letters = list(string.ascii_lowercase)
  tokens = ["!"] + letters + [c + "</w>" for c in letters] + ["<|startoftext|>", "<|endoftext|>"]
  (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
  (folder / "merges.txt").write_text("#version: 0.2\n")
  (folder / "tokenizer_config.json").write_text(json.dumps({
      "model_max_length": 12, "tokenizer_class": "CLIPTokenizer", "pad_token": "!",
      "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}))
  return str(folder)


def test_words_outside_a_word_level_vocabulary_are_named_as_written_once_each(toy):
  losses = tokens.prompt_losses(["a red Coffee cup on a coffee table", "a red cube on a plain floor", ""], toy, 0)
  assert losses[0] == tokens.PromptLoss(unknown=("Coffee", "cup", "coffee", "table"))
  assert not losses[1] and not losses[2]
  # They are the ones the ids carry as <unk> (id 3): 4 of the 8 words.
  ids = tokens.tokenize(["a red Coffee cup on a coffee table"], toy, 0)[0]
  assert (ids == 3).sum() == 4


def test_text_past_the_context_is_named(toy):
  caption = " ".join(["red cube"] * 8) + " at night"  # 18 words + bos, eos; the toy context of 16 keeps 14 words
  assert tokens.prompt_losses([caption], toy, 0) == [tokens.PromptLoss(truncated="red cube at night")]
  assert tokens.prompt_losses([caption], toy, 20) == [tokens.PromptLoss()]
  tokenizer = tokens.Tokenizer(toy, 0)
  ids = tokenizer([caption])
  np.testing.assert_array_equal(ids, tokens.tokenize([caption], toy, 0))
  np.testing.assert_array_equal(ids, tokens.tokenize([" ".join(["red cube"] * 7)], toy, 0))  # the same 14 words
  assert tokenizer.context_length == 16 and tokenizer.losses([caption]) == tokens.prompt_losses([caption], toy, 0)
  assert "cube" in tokenizer.known_words() and "<unk>" not in tokenizer.known_words()


def test_a_bpe_whose_unk_is_its_end_of_text_token_loses_nothing_of_plain_words(clip_bpe):
  losses = tokens.prompt_losses(["the red dog", "a <|endoftext|> b", "red 3 dog"], clip_bpe, 0)
  assert not losses[0] and not losses[1]  # a prompt that spells the token asked for it
  assert losses[2].unknown == ("3",)  # this tiny vocabulary has no digits (CLIP's byte-level one has every byte)
