"""Sampling completions from a causal LM: one prefill, then a jitted decode loop over a KV cache.

Everything has a fixed shape (prompt bucket, batch, ``max_new_tokens``), so a caller that pads
to buckets compiles once per bucket; the loop is a ``lax.while_loop`` that stops early when every
row has hit a stop token. G samples per prompt share one prefill (the cache is repeated).

The returned log-probs are those of the temperature-scaled policy, log softmax(logits / T),
before top-k / top-p truncation: the quantity a GRPO ratio and a teacher-forced recomputation
(``jaxrank.models.lm_scoring.completion_log_probs``) use. Greedy decoding reports T = 1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from jaxrank.models.lm import CausalLM
from jaxrank.models.lm_prompt import Prompt
from jaxrank.models.lm_scoring import prefill, token_log_probs


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """``temperature`` 0 means greedy; ``top_k`` 0 and ``top_p`` 1 switch those filters off.
    Hashable: a jit static argument."""

    max_new_tokens: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    stop_tokens: tuple[int, ...] = ()
    pad_id: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def log_prob_temperature(self) -> float:
        return 1.0 if self.greedy else self.temperature


@flax.struct.dataclass
class Completions:
    tokens: jax.Array  # [B*G, N] int32, pad_id after a row stopped
    log_probs: jax.Array  # [B*G, N] float32, 0 where mask is off
    mask: jax.Array  # [B*G, N] bool: generated (up to and including the stop token)
    lengths: jax.Array  # [B*G] int32


def filter_logits(logits: jax.Array, top_k: int, top_p: float) -> jax.Array:
    """Logits outside the top-k, or outside the smallest set whose probability reaches top_p
    (the token that crosses it included), set to -inf."""
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1:
        ordered = jnp.sort(logits, axis=-1)[..., ::-1]
        mass_before = jnp.cumsum(jax.nn.softmax(ordered, axis=-1), axis=-1)
        mass_before = mass_before - jax.nn.softmax(ordered, axis=-1)
        cutoff = jnp.min(jnp.where(mass_before < top_p, ordered, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return logits


# (step t, logits shape) -> Gumbel noise of that shape: the draw of step t
Noise = Callable[[jax.Array, tuple[int, ...]], jax.Array]


def _choose(
    logits: jax.Array, rng: jax.Array, settings: SamplingSettings, noise: jax.Array | None = None
) -> jax.Array:
    if settings.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = filter_logits(logits / settings.temperature, settings.top_k, settings.top_p)
    if noise is not None:  # what jax.random.categorical computes, with the caller's noise
        return jnp.argmax(scaled + noise, axis=-1).astype(jnp.int32)
    return jax.random.categorical(rng, scaled, axis=-1).astype(jnp.int32)


def generate(
    lm: CausalLM,
    prompt: Prompt,
    rng: jax.Array,
    settings: SamplingSettings,
    samples_per_prompt: int = 1,
    cache_dtype: DTypeLike | None = None,
    forced: jax.Array | None = None,
    noise: Noise | None = None,
) -> Completions:
    """``samples_per_prompt`` completions of every prompt row, rows ordered prompt-major
    (row b*G + g is sample g of prompt b). Call inside ``jax.jit`` (see ``Sampler``).

    ``forced`` ``[B*G, F]`` int32 writes a prefix instead of sampling it: where
    ``forced[row, t] >= 0`` the row's token t is that id (its log-prob is still the policy's,
    so a loss can weigh it); -1 samples as usual. Region-R1's decision balancing uses it to make
    a completion open with the other decision.

    ``noise(t, shape)`` gives step t's Gumbel noise ``[B*G, V]`` instead of
    ``jax.random.categorical``'s own draw with ``fold_in(rng, t)`` (which equals
    ``jax.random.gumbel(fold_in(rng, t), shape)``): a caller that decodes extra rows can give
    each one the draw some other call would have made (``region_r1.mllm_rollout``).
    """
    new = settings.max_new_tokens
    out = prefill(lm, prompt, new, cache_dtype)
    logits = jnp.repeat(lm.logits(out.hidden[:, -1]), samples_per_prompt, axis=0)
    cache = out.cache.repeat(samples_per_prompt)
    prompt = prompt.repeat(samples_per_prompt)
    next_position = prompt.next_position()
    rows = logits.shape[0]
    stop = jnp.asarray(settings.stop_tokens or (-1,), jnp.int32)

    def body(carry):
        t, logits, cache, done, tokens, log_probs = carry
        drawn = None if noise is None else noise(t, logits.shape)
        token = _choose(logits, jax.random.fold_in(rng, t), settings, drawn)
        if forced is not None:
            prefix = forced[:, jnp.minimum(t, forced.shape[1] - 1)]
            token = jnp.where((t < forced.shape[1]) & (prefix >= 0), prefix, token)
        live = ~done
        token = jnp.where(live, token, settings.pad_id)
        log_prob = token_log_probs(logits, token, settings.log_prob_temperature)
        tokens = tokens.at[:, t].set(token)
        log_probs = log_probs.at[:, t].set(jnp.where(live, log_prob, 0.0))
        done = done | jnp.isin(token, stop)
        positions = (next_position + t)[:, None]
        if prompt.positions.ndim == 3:
            positions = jnp.broadcast_to(positions, (prompt.positions.shape[0], rows, 1))
        out = lm(token[:, None], live[:, None], positions, cache=cache, compute_logits=False)
        return t + 1, lm.logits(out.hidden[:, 0]), out.cache, done, tokens, log_probs

    def more(carry):
        t, _, _, done, _, _ = carry
        return (t < new) & ~jnp.all(done)

    start = (
        jnp.zeros((), jnp.int32),
        logits,
        cache,
        jnp.zeros((rows,), bool),
        jnp.full((rows, new), settings.pad_id, jnp.int32),
        jnp.zeros((rows, new), jnp.float32),
    )
    t, _, _, _, tokens, log_probs = jax.lax.while_loop(more, body, start)
    generated = _generated_mask(tokens, stop, t)
    return Completions(tokens, log_probs, generated, generated.sum(axis=1).astype(jnp.int32))


def _generated_mask(tokens: jax.Array, stop: jax.Array, steps: jax.Array) -> jax.Array:
    """Slots up to and including each row's first stop token, within the steps taken."""
    stopped = jnp.isin(tokens, stop)
    before_stop = jnp.cumsum(stopped, axis=1) - stopped < 1
    return before_stop & (jnp.arange(tokens.shape[1]) < steps)


class Sampler:
    """Host-facing sampler: one compiled program per (batch, prompt length) bucket pair and
    settings; ``buckets`` are the allowed prompt lengths, ``batch_buckets`` the batch sizes."""

    def __init__(
        self,
        lm: CausalLM,
        settings: SamplingSettings,
        *,
        samples_per_prompt: int = 1,
        cache_dtype: DTypeLike | None = None,
    ):
        graphdef, state = nnx.split(lm)
        self.state = state
        self.settings = settings
        self.compilations = 0  # traces so far: one per distinct (batch, prompt length) shape

        def run(state, prompt, rng):
            self.compilations += 1
            model = nnx.merge(graphdef, state)
            return generate(model, prompt, rng, settings, samples_per_prompt, cache_dtype)

        self._run = jax.jit(run)

    def __call__(self, prompt: Prompt, rng: jax.Array) -> Completions:
        return self._run(self.state, prompt, rng)
