"""The KV-cache sampler and teacher-forced scoring on a tiny random decoder: cached decoding
equals the full forward pass, sampled log-probs equal their recomputation, filters and stop
tokens behave as hand-worked examples say, and bucketed shapes compile once."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrank.models.lm import CausalLM, KVCache, LMConfig, rotary_tables
from jaxrank.models.lm_prompt import Prompt, bucket, left_pad
from jaxrank.models.lm_scoring import completion_log_probs, hidden_at_token, token_log_probs
from jaxrank.rl.sampler import Sampler, SamplingSettings, filter_logits, generate

# float32 log-probs of the same tokens by two programs (decoding step by step, one teacher-forced
# pass) that sum in different orders: up to 3.3e-5 apart on an AMD EPYC host.
LOG_PROB_ATOL = 5e-5
CONFIG = LMConfig(vocab_size=61, width=32, depth=2, heads=4, kv_heads=2, mlp_dim=48)
MROPE = LMConfig(
    vocab_size=61, width=32, depth=2, heads=4, kv_heads=2, mlp_dim=48, mrope_section=(1, 1, 2)
)


def _model(config: LMConfig = CONFIG) -> CausalLM:
    model = CausalLM(config, rngs=nnx.Rngs(0))
    # A larger init than the default so the distributions are far from uniform.
    state = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda x: x * 3 if x.ndim == 2 else x, state))
    return model


def _prompt(config: LMConfig = CONFIG) -> Prompt:
    sequences = [[5, 9, 2, 7, 7, 1], [3, 4], [11, 12, 13, 14]]
    tokens, mask = left_pad(sequences, length=8)
    return Prompt.from_tokens(tokens, mask, streams=3 if config.mrope_section else 0)


@pytest.mark.parametrize("config", [CONFIG, MROPE], ids=["rope", "mrope"])
def test_cached_decoding_equals_full_forward(config):
    model = _model(config)
    prompt = _prompt(config)
    follow = jnp.asarray([[8, 1, 30], [2, 2, 2], [40, 41, 42]], jnp.int32)
    tokens = jnp.concatenate([prompt.tokens, follow], axis=1)
    mask = jnp.concatenate([prompt.mask, jnp.ones_like(follow, bool)], axis=1)
    positions = jnp.concatenate([prompt.positions, prompt.generated_positions(3)], axis=-1)
    forward = nnx.jit(lambda m, *inputs, cache=None: m(*inputs, cache=cache))
    full = forward(model, tokens, mask, positions).logits

    cache = KVCache.empty(config, 3, 11, jnp.float32)
    out = forward(model, prompt.tokens, prompt.mask, prompt.positions, cache=cache)
    steps = [out.logits]
    for t in range(3):
        out = forward(
            model, follow[:, t : t + 1], None, positions[..., 8 + t : 9 + t], cache=out.cache
        )
        steps.append(out.logits)
    cached = jnp.concatenate(steps, axis=1)
    real = np.asarray(mask)
    np.testing.assert_allclose(np.asarray(cached)[real], np.asarray(full)[real], atol=1e-4)
    assert int(out.cache.length) == 11, out.cache.length


def test_mrope_streams_pick_their_frequency_sections():
    rng = np.random.default_rng(0)
    positions = rng.integers(0, 50, (3, 2, 5))
    cos, _ = rotary_tables(jnp.asarray(positions), 8, 100.0, mrope_section=(1, 1, 2))
    inv_freq = 1.0 / 100.0 ** (np.arange(0, 8, 2) / 8)
    stream = [0, 1, 2, 2]  # frequency pair i rotates by position stream stream[i]
    angles = np.stack([positions[s] * inv_freq[i] for i, s in enumerate(stream)], axis=-1)
    np.testing.assert_allclose(cos, np.cos(np.concatenate([angles, angles], -1)), atol=1e-5)
    same = jnp.broadcast_to(jnp.asarray(positions[0]), (3, 2, 5))  # text: equal streams = RoPE
    np.testing.assert_allclose(
        rotary_tables(same, 8, 100.0, (1, 1, 2))[1], rotary_tables(same[0], 8, 100.0)[1]
    )


def test_filter_logits_hand_worked():
    logits = jnp.log(jnp.asarray([[0.05, 0.4, 0.1, 0.3, 0.15]]))
    kept = lambda x: np.isfinite(np.asarray(x))[0].tolist()
    assert kept(filter_logits(logits, 2, 1.0)) == [False, True, False, True, False]
    # 0.4 + 0.3 = 0.7 < 0.75, so the token that crosses (0.15) is kept too.
    assert kept(filter_logits(logits, 0, 0.75)) == [False, True, False, True, True]
    assert kept(filter_logits(logits, 0, 0.7)) == [False, True, False, True, False]
    assert kept(filter_logits(logits, 0, 0.1)) == [False, True, False, False, False]


def test_token_log_probs_equal_log_softmax():
    logits = jax.random.normal(jax.random.key(0), (2, 3, 7)) * 4
    targets = jnp.asarray([[0, 6, 3], [1, 1, 2]])
    want = np.take_along_axis(
        np.asarray(jax.nn.log_softmax(logits / 0.5)), np.asarray(targets)[..., None], -1
    )[..., 0]
    np.testing.assert_allclose(token_log_probs(logits, targets, 0.5), want, atol=1e-5)


@pytest.mark.parametrize("config", [CONFIG, MROPE], ids=["rope", "mrope"])
def test_sampled_log_probs_equal_teacher_forced(config):
    model = _model(config)
    prompt = _prompt(config)
    settings = SamplingSettings(
        max_new_tokens=6, temperature=1.5, top_k=20, top_p=0.9, stop_tokens=(3, 4)
    )
    out = nnx.jit(generate, static_argnums=(3, 4))(model, prompt, jax.random.key(2), settings, 4)
    assert out.tokens.shape == (12, 6)
    recomputed, hidden = completion_log_probs(
        model, prompt.repeat(4), out.tokens, out.mask, settings.temperature
    )
    np.testing.assert_allclose(out.log_probs, recomputed, atol=LOG_PROB_ATOL)
    # The shared prefix (prompt once, cache repeated) computes the same thing.
    shared, shared_hidden = completion_log_probs(
        model, prompt, out.tokens, out.mask, settings.temperature, group=4
    )
    np.testing.assert_allclose(shared, recomputed, atol=LOG_PROB_ATOL)
    np.testing.assert_allclose(shared_hidden, hidden, atol=LOG_PROB_ATOL)
    assert np.all(np.asarray(out.log_probs)[np.asarray(out.mask)] < 0)
    # Four samples of one prompt differ (temperature > 0).
    assert len({tuple(r) for r in np.asarray(out.tokens)[:4].tolist()}) > 1


def test_forced_prefix_is_written_and_scored_by_the_policy():
    model = _model()
    prompt = _prompt()
    settings = SamplingSettings(max_new_tokens=6, temperature=1.0)
    run = nnx.jit(generate, static_argnums=(3, 4))
    free = run(model, prompt, jax.random.key(4), settings, 2)
    forced = np.full((6, 3), -1, np.int32)
    forced[1] = [17, 18, 19]  # a whole prefix
    forced[4, 0] = 5  # one token, then sampling resumes
    out = run(model, prompt, jax.random.key(4), settings, 2, None, jnp.asarray(forced))
    tokens = np.asarray(out.tokens)
    np.testing.assert_array_equal(tokens[1, :3], [17, 18, 19])
    assert tokens[4, 0] == 5
    untouched = [0, 2, 3, 5]  # same key: rows without a prefix sample exactly as before
    np.testing.assert_array_equal(tokens[untouched], np.asarray(free.tokens)[untouched])
    recomputed, _ = completion_log_probs(model, prompt.repeat(2), out.tokens, out.mask)
    np.testing.assert_allclose(out.log_probs, recomputed, atol=LOG_PROB_ATOL)


def test_stop_tokens_end_a_row_and_pad_after():
    model = _model()
    prompt = _prompt()
    greedy = SamplingSettings(max_new_tokens=8, temperature=0.0, pad_id=0)
    free = nnx.jit(generate, static_argnums=(3,))(model, prompt, jax.random.key(0), greedy)
    first = int(free.tokens[0, 2])  # make row 0's third greedy token a stop token
    stopped = nnx.jit(generate, static_argnums=(3,))(
        model, prompt, jax.random.key(0), SamplingSettings(8, 0.0, stop_tokens=(first,))
    )
    row = np.asarray(stopped.tokens[0])
    end = int(np.argmax(row == first))
    assert end <= 2 and stopped.lengths[0] == end + 1
    assert np.all(row[end + 1 :] == 0) and not np.any(np.asarray(stopped.mask[0])[end + 1 :])
    np.testing.assert_array_equal(row[: end + 1], np.asarray(free.tokens[0, : end + 1]))
    assert np.all(np.asarray(free.mask))  # no stop token: every slot generated


def test_sampler_compiles_once_per_bucket():
    sampler = Sampler(_model(), SamplingSettings(max_new_tokens=3), samples_per_prompt=2)
    for sequences in ([[1, 2, 3]], [[4, 5], [6]], [[7, 8, 9, 10, 11]]):
        tokens, mask = left_pad(sequences, length=bucket(5, (4, 8)), batch=bucket(2, (2, 4)))
        out = sampler(Prompt.from_tokens(tokens, mask), jax.random.key(0))
        assert out.tokens.shape == (4, 3)
    assert sampler.compilations == 1


def test_hidden_at_last_marker():
    hidden = jnp.arange(2 * 4 * 2, dtype=jnp.float32).reshape(2, 4, 2)
    tokens = jnp.asarray([[9, 5, 9, 1], [1, 2, 3, 4]])
    vectors, found = hidden_at_token(hidden, tokens, 9)
    np.testing.assert_array_equal(vectors[0], hidden[0, 2])
    assert found.tolist() == [True, False]


def test_left_pad_errors_name_the_prompt():
    with pytest.raises(ValueError, match="prompt 1 has 5 tokens; expected 1 to 4"):
        left_pad([[1], [1, 2, 3, 4, 5]], length=4)
    with pytest.raises(ValueError, match="exceeds the largest bucket 8"):
        bucket(9, (4, 8))
