"""A closed word-level tokenizer, enough for tiny text towers on a world with a fixed lexicon."""

import re
from collections.abc import Iterable, Sequence

import numpy as np

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
_TOKEN = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def tokenize(text: str) -> list[str]:
    """Lower-cased words; each punctuation mark is a word of its own ("top-left" -> 3 words)."""
    return _TOKEN.findall(text.lower())


class Vocabulary:
    """Ids 0-3 are <pad>, <bos>, <eos>, <unk>; the words follow in the order given."""

    def __init__(self, words: Iterable[str]):
        self.words: tuple[str, ...] = (*SPECIAL_TOKENS, *words)
        self._ids = {word: i for i, word in enumerate(self.words)}
        if len(self._ids) != len(self.words):
            raise ValueError("duplicate words in the vocabulary")

    @property
    def size(self) -> int:
        return len(self.words)

    def encode(self, texts: Sequence[str], max_len: int) -> np.ndarray:
        """int32 [len(texts), max_len]: <bos> words <eos> then <pad>; too-long texts lose their
        last words, never the <eos>."""
        if max_len < 2:
            raise ValueError("max_len must leave room for <bos> and <eos>")
        ids = np.full((len(texts), max_len), PAD, np.int32)
        for row, text in enumerate(texts):
            words = [self._ids.get(word, UNK) for word in tokenize(text)][: max_len - 2]
            ids[row, : len(words) + 2] = [BOS, *words, EOS]
        return ids

    def decode(self, ids: np.ndarray) -> list[str]:
        """Space-joined words of each row, up to its first <eos>; <pad> and <bos> dropped."""
        texts = []
        for row in np.atleast_2d(ids):
            words = []
            for i in row.tolist():
                if i == EOS:
                    break
                if i not in (PAD, BOS):
                    words.append(self.words[i])
            texts.append(" ".join(words))
        return texts
