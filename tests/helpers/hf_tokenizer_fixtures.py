"""Tiny CLIP- and SigLIP-style tokenizers written offline, for tests that load a checkpoint
folder with ``AutoTokenizer`` (no hub access, no sentencepiece).

Both vocabularies cover the lowercase letters, so any lowercase word tokenizes (whole words
for ``a photo of the cat/dog``, single letters otherwise); other characters map to unk.
"""

from __future__ import annotations

import string
from pathlib import Path

from jaxrank.models.hf.qwen_tokenizer import QWEN_CHAT_TEMPLATE, QWEN_SPECIAL

_LETTERS = string.ascii_lowercase
_WORDS = ("a", "photo", "of", "the", "cat", "dog")

# CLIP: byte-level BPE with "</w>" marking a word's last symbol, as in OpenAI's vocabulary.
_CLIP_MERGES = [
    ("c", "a"),
    ("ca", "t</w>"),
    ("d", "o"),
    ("do", "g</w>"),
    ("p", "h"),
    ("ph", "o"),
    ("pho", "t"),
    ("phot", "o</w>"),
    ("o", "f</w>"),
    ("t", "h"),
    ("th", "e</w>"),
]
CLIP_BOS_ID = 0
CLIP_UNK_ID = 1
# The end-of-text (and pad) token is the last id, so both of transformers' CLIP pooling rules
# (first position of eos_token_id, or argmax of the ids for legacy configs) find it.
CLIP_EOS_ID = 2 + 2 * len(_LETTERS) + len(_CLIP_MERGES)
CLIP_VOCAB_SIZE = CLIP_EOS_ID + 1

# SigLIP: the ids of google/siglip-*'s special tokens (<pad> 0, </s> 1, <unk> 2); </s> ends
# every text and is also the pad token.
SIGLIP_EOS_ID = 1
SIGLIP_UNK_ID = 2
_SIGLIP_PIECES = [
    ("<pad>", 0.0),
    ("</s>", 0.0),
    ("<unk>", 0.0),
    ("▁", -2.0),
    *((f"▁{word}", -3.0) for word in _WORDS),
    *((letter, -5.0) for letter in _LETTERS),
]
SIGLIP_VOCAB_SIZE = len(_SIGLIP_PIECES)


def write_tiny_clip_tokenizer(folder: str | Path) -> Path:
    """Save a ``CLIPTokenizer`` with a 64-token vocabulary: bos 0, unk 1, eos = pad =
    ``CLIP_EOS_ID`` (the highest id). Every encoded text is ``[bos, ..., eos]``, also when
    truncated. Unk is its own token (OpenAI's CLIP reuses eos) so an unknown character can
    never be mistaken for the end of the text."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": CLIP_BOS_ID, "<|unk|>": CLIP_UNK_ID}
    for symbol in [*_LETTERS, *(f"{c}</w>" for c in _LETTERS)]:
        vocab[symbol] = len(vocab)
    for left, right in _CLIP_MERGES:
        vocab[left + right] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    assert vocab["<|endoftext|>"] == CLIP_EOS_ID
    tokenizer = CLIPTokenizer(vocab=vocab, merges=_CLIP_MERGES, unk_token="<|unk|>")
    folder = Path(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_tiny_siglip_tokenizer(folder: str | Path) -> Path:
    """Save a SigLIP-style fast tokenizer (unigram over ``▁``-prefixed words, lowercased with
    punctuation stripped like SigLIP's ``canonicalize_text``, ``</s>`` appended, ``</s>`` as
    pad, ``model_max_length`` 64). transformers v5's ``SiglipTokenizer`` needs sentencepiece, so
    this is built with the ``tokenizers`` library and loads as a generic fast tokenizer."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.Unigram(_SIGLIP_PIECES, unk_id=SIGLIP_UNK_ID, byte_fallback=False))
    backend.normalizer = normalizers.Sequence(
        [
            normalizers.Replace(Regex(r"[^\w\s]"), ""),
            normalizers.Lowercase(),
            normalizers.Replace(Regex(r"\s+"), " "),
            normalizers.Strip(),
        ]
    )
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", SIGLIP_EOS_ID)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="</s>",
        pad_token="</s>",
        unk_token="<unk>",
        model_max_length=64,
    )
    folder = Path(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_qwen_tokenizer():
    """A ``Qwen2Tokenizer`` over the 256 byte symbols (BPE without merges) plus Qwen's chat and
    vision special tokens, pad ``<|endoftext|>``, eos ``<|im_end|>``, and the chat template of
    ``jaxrank.models.hf.qwen_tokenizer`` (262 tokens)."""
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {symbol: i for i, symbol in enumerate(bytes_to_unicode().values())}
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=[], unk_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL)})
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer
