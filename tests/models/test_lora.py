"""LoRA on nnx models: the base model exactly at B = 0 and with the adapters off, merged =
unmerged = the formula, PEFT's conventions (targets, scaling, merge, A's init), training and
checkpointing only the adapters through the shared train step, dropout modes, tensor-parallel
layout."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxrank.models.hf import qwen2
from jaxrank.models.hf.export import checkpoint_tensors
from jaxrank.models.lm import CausalLM, LMConfig
from jaxrank.models.lora import (
    LoRAConfig,
    LoRALinear,
    LoRAParam,
    adapters_off,
    apply_lora,
    join_lora,
    merge_lora,
    split_lora,
)
from jaxrank.parallel import MODEL, make_mesh, shard_batch, state_shardings
from jaxrank.train.checkpoint import Checkpointer
from jaxrank.train.step import TrainState, jit_train_step, make_train_step

CONFIG = LMConfig(vocab_size=31, width=16, depth=1, heads=4, kv_heads=2, mlp_dim=24)
IDS = jnp.asarray(np.random.default_rng(0).integers(0, 31, (4, 7)))
X = jnp.asarray(np.random.default_rng(1).normal(size=(4, 16)), jnp.float32)
LORA = LoRAConfig(rank=4, alpha=8.0)  # one config where possible: compiled functions are reused
LM_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class MLP(nnx.Module):
    """Linears in an nnx.List and a named head: adapters replace list items and attributes.
    (The decoder's shapes, so that their initialisers compile once.)"""

    def __init__(self, rngs: nnx.Rngs):
        self.layers = nnx.List([nnx.Linear(16, 24, rngs=rngs), nnx.Linear(24, 16, rngs=rngs)])
        self.lm_head = nnx.Linear(16, 31, use_bias=False, rngs=rngs)

    def __call__(self, x):
        for layer in self.layers:
            x = jax.nn.gelu(layer(x))
        return self.lm_head(x)


@functools.cache
def _built(kind: type[nnx.Module]) -> nnx.Module:
    return CausalLM(CONFIG, rngs=nnx.Rngs(0)) if kind is CausalLM else kind(nnx.Rngs(0))


def _lm() -> CausalLM:
    """A fresh copy of one tiny decoder (building it anew compiles its initialisers again)."""
    return nnx.clone(_built(CausalLM))


def _mlp() -> MLP:
    return nnx.clone(_built(MLP))


@jax.jit
def _logits(model: CausalLM, ids: jax.Array) -> jax.Array:
    return model(ids).logits


MODELS = {
    "lm": (_lm, lambda model: _logits(model, IDS)),
    "mlp": (_mlp, jax.jit(lambda model: model(X))),
}


def _perturb(model: nnx.Module, seed: int = 1) -> None:
    """Random non-zero A and B, as after training (B = 0 would hide most mistakes)."""
    rng = np.random.default_rng(seed)
    noise = lambda x: jax.device_put(rng.normal(0, 0.3, x.shape).astype(x.dtype), x.sharding)
    nnx.update(model, jax.tree.map(noise, nnx.state(model, LoRAParam)))


def _arrays(state: nnx.State) -> dict[tuple, np.ndarray]:
    return {path: np.array(v[...]) for path, v in nnx.to_flat_state(state)}


def _wrapped(model: nnx.Module) -> set[str]:
    return {".".join(map(str, p)) for p, m in nnx.iter_modules(model) if isinstance(m, LoRALinear)}


@pytest.mark.parametrize("name", MODELS)
def test_zero_b_is_exactly_the_base_model(name):
    build, forward = MODELS[name]
    model = build()
    want = forward(model)
    apply_lora(model, LORA, nnx.Rngs(1))
    adapters = _arrays(nnx.state(model, LoRAParam))
    assert all((np.abs(a).max() > 0) == (p[-1] == "lora_a") for p, a in adapters.items())
    np.testing.assert_array_equal(forward(model), want)


def test_merged_equals_unmerged_and_the_formula():
    model = apply_lora(_lm(), LORA, nnx.Rngs(1))
    _perturb(model)
    layer = model.layers[0].self_attn.q_proj
    w, b, a, bb = (
        np.asarray(v[...]) for v in (layer.base.kernel, layer.base.bias, layer.lora_a, layer.lora_b)
    )
    x = np.random.default_rng(2).normal(size=(3, 16)).astype(np.float32)
    np.testing.assert_allclose(layer(x), x @ w + b + (x @ a @ bb) * 8.0 / 4, atol=1e-5, rtol=0)

    unmerged = _logits(model, IDS)
    merged = merge_lora(model)
    assert merged is model and not _wrapped(model)
    assert not jax.tree.leaves(nnx.state(model, LoRAParam))
    # The plain model's parameter paths again, so the HF exporter's name map applies to it.
    assert _arrays(nnx.state(model)).keys() == _arrays(nnx.state(_lm())).keys()
    assert type(model.layers[0].self_attn.q_proj) is nnx.Linear
    tensors = checkpoint_tensors(model, qwen2.name_map(CONFIG))
    exported = tensors["model.layers.0.self_attn.q_proj.weight"]
    np.testing.assert_allclose(exported, (w + a @ bb * 2.0).T, atol=1e-6, rtol=0)
    np.testing.assert_allclose(_logits(model, IDS), unmerged, atol=1e-5, rtol=0)


def test_update_in_compute_dtype():
    """bfloat16 compute over float32 weights, as recipes' ``model.dtype`` means."""
    base = nnx.Linear(16, 8, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    layer = LoRALinear(base, 4, 8.0, rngs=nnx.Rngs(1))
    layer.lora_b.set_value(jnp.ones((4, 8)))
    assert layer.lora_a[...].dtype == jnp.float32
    out = jax.jit(lambda layer: layer(X))(layer)
    w, b, a = (np.asarray(v[...]) for v in (layer.base.kernel, layer.base.bias, layer.lora_a))
    assert out.dtype == jnp.bfloat16
    want = X @ w + b + (X @ a @ np.ones((4, 8))) * 2.0
    np.testing.assert_allclose(np.asarray(out, np.float32), want, rtol=2e-2, atol=2e-2)


def test_adapters_off_is_the_base_model():
    want = _logits(_lm(), IDS)
    model = apply_lora(_lm(), LORA, nnx.Rngs(1))
    _perturb(model)
    graphdef, adapters, rest = split_lora(model)
    run = jax.jit(lambda adapters, rest: _logits(join_lora(graphdef, adapters, rest), IDS))
    assert np.abs(run(adapters, rest) - want).max() > 1e-2
    np.testing.assert_array_equal(run(adapters_off(adapters), rest), want)


def test_targets_and_parameter_count():
    model = apply_lora(_lm(), LORA, nnx.Rngs(1))
    assert _wrapped(model) == {
        f"layers.0.{'self_attn' if name in LM_LINEARS[:4] else 'mlp'}.{name}" for name in LM_LINEARS
    }
    assert type(model.lm_head) is nnx.Linear  # "all-linear" leaves the output head alone
    layers = [m for _, m in nnx.iter_modules(model) if isinstance(m, LoRALinear)]
    count = sum(x.size for x in jax.tree.leaves(split_lora(model)[1]))
    assert count == sum(4 * (m.base.in_features + m.base.out_features) for m in layers)

    chosen = apply_lora(_lm(), dataclasses.replace(LORA, targets=("q_proj", "v_proj")), nnx.Rngs(1))
    assert _wrapped(chosen) == {"layers.0.self_attn.q_proj", "layers.0.self_attn.v_proj"}
    assert _wrapped(apply_lora(_mlp(), LORA, nnx.Rngs(1))) == {"layers.0", "layers.1"}
    head_and_second = dataclasses.replace(LORA, targets=("lm_head", "layers.1"))
    assert _wrapped(apply_lora(_mlp(), head_and_second, nnx.Rngs(1))) == {"layers.1", "lm_head"}

    unknown = dataclasses.replace(LORA, targets=("q_proj", "qkv_proj"))
    with pytest.raises(ValueError, match=r"\['qkv_proj'\] match no nnx.Linear.*'o_proj'"):
        apply_lora(_lm(), unknown, nnx.Rngs(1))
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(chosen, LORA, nnx.Rngs(1))
    with pytest.raises(ValueError, match="no LoRA adapters"):
        split_lora(_lm())
    for bad in (
        {"rank": 0},
        {"rank": 2.0},
        {"alpha": 0.0},
        {"dropout": 1.0},
        {"targets": "q_proj"},
        {"targets": ()},
    ):
        with pytest.raises(ValueError, match="LoRAConfig"):
            LoRAConfig(**{"rank": 2, "alpha": 1.0, **bad})


def test_train_step_updates_only_the_adapters_and_checkpoints_them(tmp_path):
    model = apply_lora(_mlp(), dataclasses.replace(LORA, dropout=0.1), nnx.Rngs(1))
    graphdef, adapters, rest = split_lora(model)
    # ``rest`` also holds the dropout's RNG state (typed keys), not weights.
    base, initial = _arrays(nnx.filter_state(rest, nnx.Param)), _arrays(adapters)
    target = jnp.asarray(np.random.default_rng(3).normal(size=(4, 31)), jnp.float32)

    def loss_fn(params, x, rng, frozen):  # a recipe's loss: adapters trained, the base frozen
        model = join_lora(graphdef, params, frozen, dropout_key=rng)
        return jnp.mean((model(x) - target) ** 2), {}

    optimizer = optax.adam(1e-2)
    state = TrainState.create(adapters, optimizer, seed=0)
    step = jit_train_step(make_train_step(loss_fn, optimizer), state)
    state, first = step(state, X, rest)
    # B = 0 makes A's first gradient zero (dL/dA = x^T g B^T): only B moves on step one.
    after_one = _arrays(state.params)
    for path, a in after_one.items():
        assert np.array_equal(a, initial[path]) == (path[-1] == "lora_a"), path
    for _ in range(4):
        state, metrics = step(state, X, rest)
    assert metrics["loss"] < first["loss"]
    for path, a in _arrays(state.params).items():
        assert not np.array_equal(a, after_one[path]), path
    for path, now in _arrays(nnx.filter_state(rest, nnx.Param)).items():
        np.testing.assert_array_equal(now, base[path])

    with Checkpointer(tmp_path) as checkpointer:
        checkpointer.save(5, state, {})
        _, restored, _ = checkpointer.restore(TrainState.create(adapters, optimizer, seed=0))
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(got, want)


def test_dropout_is_random_in_training_and_off_in_eval():
    rngs = nnx.Rngs(params=1, dropout=2)
    model = apply_lora(_mlp(), dataclasses.replace(LORA, dropout=0.5), rngs)
    _perturb(model)
    twice = nnx.jit(lambda model: (model(X), model(X)))
    assert not np.allclose(*twice(model))  # training mode (nnx's default): the stream advances
    forward = jax.jit(lambda model: model(X))
    evaluating = nnx.view(model, deterministic=True)
    np.testing.assert_array_equal(forward(evaluating), forward(evaluating))
    np.testing.assert_allclose(
        forward(evaluating), forward(merge_lora(nnx.clone(model))), atol=1e-5
    )

    graphdef, adapters, rest = split_lora(model)

    @jax.jit
    def run(adapters, rest, key):
        return join_lora(graphdef, adapters, rest, dropout_key=key)(X)

    key, other = jax.random.split(jax.random.key(3))
    np.testing.assert_array_equal(run(adapters, rest, key), run(adapters, rest, key))
    assert not np.allclose(run(adapters, rest, key), run(adapters, rest, other))


def test_tensor_parallel_layout_and_forward():
    mesh = make_mesh(data=4, model=2)
    model = _lm()
    state = nnx.state(model)  # every weight on the mesh, as load_causal_lm(mesh=) leaves them
    nnx.update(model, jax.device_put(state, state_shardings(state, mesh)))
    targets = ("q_proj", "o_proj", "up_proj", "down_proj", "lm_head")
    apply_lora(model, dataclasses.replace(LORA, targets=targets), nnx.Rngs(1))
    _perturb(model)
    layer = model.layers[0]
    expected = {
        layer.self_attn.q_proj: (P(), P(None, MODEL)),
        layer.self_attn.o_proj: (P(MODEL), P()),
        layer.mlp.up_proj: (P(), P(None, MODEL)),
        layer.mlp.down_proj: (P(MODEL), P()),
        model.lm_head: (P(), P()),
    }
    for adapted, specs in expected.items():
        for variable, spec in zip((adapted.lora_a, adapted.lora_b), specs, strict=True):
            assert variable[...].sharding.is_equivalent_to(NamedSharding(mesh, spec), 2)
    adapters = nnx.state(model, LoRAParam)
    for variable, sharding in zip(
        jax.tree.leaves(adapters), jax.tree.leaves(state_shardings(adapters, mesh)), strict=True
    ):
        assert variable.sharding.is_equivalent_to(sharding, 2)

    graphdef, state = nnx.split(model)
    single = nnx.merge(graphdef, jax.device_put(state, jax.devices()[0]))
    want = _logits(single, IDS)
    with jax.set_mesh(mesh):
        got = _logits(model, shard_batch(np.asarray(IDS), mesh))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    merge_lora(model)
    kernel = model.layers[0].self_attn.q_proj.kernel[...]
    assert kernel.sharding.is_equivalent_to(NamedSharding(mesh, P(None, MODEL)), 2)


def test_a_init_is_peft_kaiming_uniform():
    """PEFT initialises A with torch's kaiming_uniform_(a=sqrt(5)): U(-1/sqrt(in), 1/sqrt(in))."""
    model = apply_lora(_lm(), LORA, nnx.Rngs(1))
    layers = [m for _, m in nnx.iter_modules(model) if isinstance(m, LoRALinear)]
    a = np.concatenate([np.ravel(m.lora_a[...]) for m in layers if m.base.in_features == 16])
    bound = 1 / np.sqrt(16)
    assert np.abs(a).max() <= bound and np.abs(a).max() > 0.95 * bound
    assert abs(a.std() - bound / np.sqrt(3)) < 0.05 * bound


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # peft's call
def test_matches_peft():
    """Same weights give PEFT's output and merged weight; "all-linear" picks PEFT's layers."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    net = torch.nn.Sequential()
    net.add_module("proj", torch.nn.Linear(16, 8))
    config = peft.LoraConfig(r=4, lora_alpha=7, target_modules=["proj"], init_lora_weights=False)
    reference = peft.get_peft_model(net, config).eval()
    proj = reference.base_model.model.proj
    weights = {
        "kernel": proj.base_layer.weight.T,
        "bias": proj.base_layer.bias,
        "lora_a": proj.lora_A["default"].weight.T,
        "lora_b": proj.lora_B["default"].weight.T,
    }
    weights = {k: jnp.asarray(v.detach().numpy()) for k, v in weights.items()}
    ours = LoRALinear(nnx.Linear(16, 8, rngs=nnx.Rngs(0)), 4, 7.0, rngs=nnx.Rngs(1))
    for name, variable in {
        "kernel": ours.base.kernel,
        "bias": ours.base.bias,
        "lora_a": ours.lora_a,
        "lora_b": ours.lora_b,
    }.items():
        variable.set_value(weights[name])
    with torch.no_grad():
        want = reference(torch.tensor(np.asarray(X))).numpy()
        merged = reference.merge_and_unload().proj.weight.T.numpy()
    np.testing.assert_allclose(ours(X), want, atol=1e-6, rtol=0)
    np.testing.assert_allclose(ours.merged().kernel[...], merged, atol=1e-6, rtol=0)

    qwen2 = transformers.Qwen2ForCausalLM(
        transformers.Qwen2Config(
            vocab_size=31,
            hidden_size=16,
            intermediate_size=24,
            num_hidden_layers=CONFIG.depth,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=False,
        )
    )
    adapted = peft.get_peft_model(qwen2, peft.LoraConfig(r=2, target_modules="all-linear"))
    theirs = {
        name.removeprefix("base_model.model.model.")
        for name, module in adapted.named_modules()
        if isinstance(module, peft.tuners.lora.LoraLayer)
    }
    assert theirs == _wrapped(apply_lora(_lm(), LORA, nnx.Rngs(1)))
