"""A small Qwen-style tokenizer trained offline on a recipe's own texts, for policies that start
from a random tiny vision-language model (the CPU demonstrations): byte-level BPE, Qwen's chat
and vision special tokens, Qwen2.5's ``<tool_call>`` tags as ordinary added tokens (they stay
in decoded text, as with the released checkpoints), and a chat template in Qwen's format.

Real checkpoints bring their own tokenizer (``QwenVLInputs.from_pretrained``); this one only has
to render the same chat structure and round-trip the texts a recipe writes.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

PAD = "<|endoftext|>"
QWEN_SPECIAL = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>")
TOOL_TAGS = ("<tool_call>", "</tool_call>")
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_qwen_style_tokenizer(corpus: Iterable[str], vocab_size: int, folder: str | Path):
    """Train byte-level BPE (at most ``vocab_size`` tokens) on ``corpus``, add Qwen's special
    tokens and the tool-call tags, save it to ``folder`` (loadable with ``AutoTokenizer``) and
    return it. Deterministic for a given corpus."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, *QWEN_SPECIAL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer)
    backend.add_tokens([AddedToken(tag, special=False, normalized=False) for tag in TOOL_TAGS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token=PAD,
        additional_special_tokens=list(QWEN_SPECIAL),
    )
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return tokenizer
