"""Prompts as the decoder sees them: left-padded to a bucket length, with explicit positions.

Left padding puts every row's last prompt token in the same slot, so one cache index serves the
whole batch during decoding; the positions (counted over real tokens only, or Qwen2-VL's
three-stream M-RoPE positions) keep each row's rotary phases as if it were unpadded.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class Prompt:
    tokens: jax.Array  # [B, P] int32, left-padded
    mask: jax.Array  # [B, P] bool, real tokens
    positions: jax.Array  # [B, P] or [3, B, P] (M-RoPE) int32
    embeddings: jax.Array | None = None  # [B, P, W]: replaces the token lookup (a VLM's prompt)

    @classmethod
    def from_tokens(cls, tokens: jax.Array, mask: jax.Array, streams: int = 0) -> Prompt:
        """Positions count real tokens from 0 (padding gets 0, as the reference does);
        ``streams`` = 3 repeats them for M-RoPE, where text tokens share one position."""
        mask = jnp.asarray(mask, bool)
        positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0).astype(jnp.int32)
        if streams:
            positions = jnp.broadcast_to(positions, (streams, *positions.shape))
        return cls(jnp.asarray(tokens, jnp.int32), mask, positions)

    @property
    def batch(self) -> int:
        return self.tokens.shape[0]

    def next_position(self) -> jax.Array:
        """[B]: the position of the first generated token, one past the largest real one
        (for M-RoPE, over all three streams: what the reference's ``rope_deltas`` encode)."""
        positions = self.positions if self.positions.ndim == 3 else self.positions[None]
        real = jnp.where(self.mask[None], positions, -1)
        return real.max(axis=(0, 2)) + 1

    def generated_positions(self, length: int) -> jax.Array:
        """Positions of ``length`` tokens that follow the prompt, in the prompt's layout."""
        positions = self.next_position()[:, None] + jnp.arange(length, dtype=jnp.int32)
        if self.positions.ndim == 3:
            positions = jnp.broadcast_to(positions, (self.positions.shape[0], *positions.shape))
        return positions

    def repeat(self, times: int) -> Prompt:
        """Every row ``times`` times in a row (G samples per prompt)."""
        rep = lambda x, axis: None if x is None else jnp.repeat(x, times, axis=axis)
        axis = 1 if self.positions.ndim == 3 else 0
        return Prompt(
            rep(self.tokens, 0),
            rep(self.mask, 0),
            rep(self.positions, axis),
            rep(self.embeddings, 0),
        )


def left_pad(
    sequences: Sequence[Sequence[int]],
    *,
    length: int,
    batch: int | None = None,
    pad_id: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Host-side: token lists -> (tokens, mask) [batch, length], each row right-aligned.
    Extra rows (``batch`` > len(sequences), a batch bucket) are all padding."""
    batch = len(sequences) if batch is None else batch
    if len(sequences) > batch:
        raise ValueError(f"{len(sequences)} prompts do not fit a batch of {batch}")
    tokens = np.full((batch, length), pad_id, np.int32)
    mask = np.zeros((batch, length), bool)
    for row, sequence in enumerate(sequences):
        if not 0 < len(sequence) <= length:
            raise ValueError(
                f"prompt {row} has {len(sequence)} tokens; expected 1 to {length} (the bucket)"
            )
        tokens[row, length - len(sequence) :] = sequence
        mask[row, length - len(sequence) :] = True
    return tokens, mask


def bucket(size: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``size``, so shapes repeat and nothing recompiles."""
    fitting = [b for b in sorted(buckets) if b >= size]
    if not fitting:
        raise ValueError(f"size {size} exceeds the largest bucket {max(buckets)}")
    return fitting[0]
