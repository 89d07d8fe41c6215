"""The vision towers of Qwen2-VL and Qwen2.5-VL: flattened patches of any number of images of any
sizes -> the merged image tokens that a VLM splices into its text sequence.

The layout is the checkpoints' (see ``jaxrank.models.hf.qwen_vision``): a patch embedding, blocks
of rotary self-attention and MLP, and a merger that concatenates each 2x2 group of neighbouring
patch tokens and projects it to the language model's width. Qwen2-VL uses LayerNorm and a
two-layer MLP; Qwen2.5-VL RMSNorm, a gated MLP with biases, and attention within windows of
``window_size`` pixels except in the ``fullatt_block_indexes`` blocks.

Attention never crosses an image (nor a video frame). The grids ``(t, h, w)`` (in patches) come
from the image processor on the host, so they are static here: positions, which tokens share an
image or a window, and the gathers that group them are numpy constants computed at trace time.
Attention then runs per group ([groups, longest group, ...], padding masked), so its cost grows
with the group sizes, not with the total number of tokens squared. Images that share one grid
(a training batch) run on a leading image axis with one image's groups, which ``jax.jit``
splits over the batch's devices; gathers over every image of the batch would not be split.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import DTypeLike

from jaxrank.models import layer_stack
from jaxrank.models.layer_stack import UNROLLED, Stacking
from jaxrank.models.lm import RMSNorm, apply_rotary
from jaxrank.models.sharding import (
    COLUMN_PARALLEL,
    ROW_PARALLEL,
    partitioned,
    place_on_mesh_if_set,
)
from jaxrank.models.transformer import ACTIVATIONS, MLP, layer_norm
from jaxrank.models.validation import require_choice, require_divisible, require_positive

Variant = Literal["qwen2_vl", "qwen2_5_vl"]
Grid = tuple[int, int, int]  # (frames / temporal_patch_size, height, width) in patches
GATED_ACTIVATIONS = {**ACTIVATIONS, "silu": jax.nn.silu}
_INIT = nnx.initializers.lecun_normal()


@dataclasses.dataclass(frozen=True)
class QwenVisionConfig:
    """Shape of the tower. ``width`` is the tower's own width (Qwen2-VL's ``embed_dim``,
    Qwen2.5-VL's ``hidden_size``), ``out_width`` the language model's. ``window_size`` (pixels)
    turns on Qwen2.5-VL's window attention in every block but ``fullatt_block_indexes``; None
    means every block attends to the whole image."""

    variant: Variant
    depth: int
    width: int
    heads: int
    mlp_dim: int
    out_width: int
    act: str = "quick_gelu"
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    channels: int = 3
    rope_theta: float = 10_000.0
    window_size: int | None = None
    fullatt_block_indexes: tuple[int, ...] = ()
    norm_eps: float = 1e-6
    stacking: Stacking = UNROLLED

    def __post_init__(self) -> None:
        owner = type(self).__name__
        require_choice(owner, "variant", self.variant, ("qwen2_vl", "qwen2_5_vl"))
        require_positive(
            owner,
            depth=self.depth,
            width=self.width,
            heads=self.heads,
            mlp_dim=self.mlp_dim,
            out_width=self.out_width,
            patch_size=self.patch_size,
            temporal_patch_size=self.temporal_patch_size,
            spatial_merge_size=self.spatial_merge_size,
            channels=self.channels,
            rope_theta=self.rope_theta,
            norm_eps=self.norm_eps,
        )
        require_divisible(owner, "width", self.width, "heads", self.heads)
        # Rotary: a quarter of each head rotates by the row, a quarter by the column, twice.
        require_divisible(owner, "head_dim", self.head_dim, "4", 4)
        gated = self.variant == "qwen2_5_vl"
        require_choice(owner, "act", self.act, GATED_ACTIVATIONS if gated else ACTIVATIONS)
        if self.window_size is not None and self.window_units < 1:
            raise ValueError(
                f"{owner}.window_size={self.window_size} must be at least patch_size * "
                f"spatial_merge_size = {self.patch_size * self.spatial_merge_size}"
            )
        outside = [i for i in self.fullatt_block_indexes if not 0 <= i < self.depth]
        if outside:
            raise ValueError(f"{owner}.fullatt_block_indexes {outside} are not blocks 0..depth-1")

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def patch_dim(self) -> int:
        """Length of one flattened patch: channels x temporal_patch_size x patch_size^2."""
        return self.channels * self.temporal_patch_size * self.patch_size**2

    @property
    def window_units(self) -> int:
        """Window side in merged tokens (2x2 patch groups), as the reference rounds it."""
        assert self.window_size is not None
        return self.window_size // self.spatial_merge_size // self.patch_size


@dataclasses.dataclass(frozen=True)
class TokenLayout:
    """Where every patch token of a batch of grids sits, in the processor's token order
    (image by image, frame by frame, 2x2 merge groups row-major, row-major inside a group).
    ``positions`` [N, 2] (row, column); ``frames`` [N] and ``windows`` [N] (None without window
    attention) number the attention groups across the whole batch."""

    positions: np.ndarray
    frames: np.ndarray
    windows: np.ndarray | None


def token_layout(
    grids: tuple[Grid, ...], merge: int, window_units: int | None = None
) -> TokenLayout:
    """The layout of ``grids`` (see ``TokenLayout``)."""
    positions, frames, windows = [], [], []
    frame_offset = window_offset = 0
    for t, h, w in grids:
        if h % merge or w % merge:
            raise ValueError(f"grid {(t, h, w)}: height and width must be multiples of {merge}")
        group, inner = np.divmod(np.arange(h * w), merge * merge)
        row, col = np.divmod(group, w // merge)  # of the merged token
        inner_row, inner_col = np.divmod(inner, merge)
        frame_positions = np.stack([row * merge + inner_row, col * merge + inner_col], axis=-1)
        positions.append(np.tile(frame_positions, (t, 1)))
        frames.append(frame_offset + np.repeat(np.arange(t), h * w))
        frame_offset += t
        if window_units is not None:
            across = -(-(w // merge) // window_units)  # windows per row, the last one partial
            per_frame = across * -(-(h // merge) // window_units)
            window = (row // window_units) * across + col // window_units
            windows.append(window_offset + (np.arange(t)[:, None] * per_frame + window).ravel())
            window_offset += t * per_frame
    return TokenLayout(
        positions=np.concatenate(positions),
        frames=np.concatenate(frames),
        windows=np.concatenate(windows) if window_units is not None else None,
    )


@dataclasses.dataclass(frozen=True)
class Groups:
    """Gathers that lay tokens out as [groups, longest group] (``index``; ``valid`` marks real
    slots) and put them back (``inverse``: each token's slot in the flattened layout)."""

    index: np.ndarray
    valid: np.ndarray
    inverse: np.ndarray


def groups(ids: np.ndarray) -> Groups:
    """The ``Groups`` of tokens labelled with group ``ids`` [N] (tokens keep their order)."""
    order = np.argsort(ids, kind="stable")
    _, starts, counts = np.unique(ids[order], return_index=True, return_counts=True)
    row = np.repeat(np.arange(len(counts)), counts)
    slot = np.arange(len(ids)) - np.repeat(starts, counts)
    shape = (len(counts), int(counts.max()))
    index = np.zeros(shape, np.int32)
    index[row, slot] = order
    valid = np.zeros(shape, bool)
    valid[row, slot] = True
    inverse = np.empty(len(ids), np.int32)
    inverse[order] = row * shape[1] + slot
    return Groups(index, valid, inverse)


def rotary_tables(positions: np.ndarray, head_dim: int, theta: float) -> tuple[jax.Array, ...]:
    """cos and sin [N, head_dim] float32 for (row, column) ``positions`` [N, 2]: frequencies
    over head_dim / 2 applied to the row, then the column, and that half repeated."""
    half = head_dim // 2
    inv_freq = 1.0 / theta ** (jnp.arange(0, half, 2, dtype=jnp.float32) / half)
    angles = (jnp.asarray(positions, jnp.float32)[..., None] * inv_freq).reshape(-1, half)
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def _linear(n_in: int, n_out: int, spec, dtypes: dict, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(n_in, n_out, kernel_metadata=partitioned(spec), **dtypes, rngs=rngs)


class VisionAttention(nnx.Module):
    """Rotary self-attention within groups of tokens; the rotation and the softmax run in float32
    whatever the compute dtype (as the reference does)."""

    def __init__(self, config: QwenVisionConfig, *, dtypes: dict, rngs: nnx.Rngs):
        self.config = config
        width = config.width
        with place_on_mesh_if_set():
            self.q_proj = _linear(width, width, COLUMN_PARALLEL, dtypes, rngs)
            self.k_proj = _linear(width, width, COLUMN_PARALLEL, dtypes, rngs)
            self.v_proj = _linear(width, width, COLUMN_PARALLEL, dtypes, rngs)
            self.proj = _linear(width, width, ROW_PARALLEL, dtypes, rngs)

    def __call__(self, x: jax.Array, rotary: tuple[jax.Array, jax.Array], group: Groups):
        """``x`` [U, N, W]: U units of N tokens each (``QwenVisionTower``); ``rotary`` cos, sin
        [N, head_dim]; each unit's tokens attend within ``group`` (the same for every unit)."""
        heads, head_dim = self.config.heads, self.config.head_dim
        cos, sin = (table[None] for table in rotary)

        def split(y: jax.Array) -> jax.Array:
            return y.reshape(*y.shape[:-1], heads, head_dim)

        def rotate(y: jax.Array) -> jax.Array:
            return apply_rotary(y.astype(jnp.float32), cos, sin).astype(y.dtype)

        def grouped(y: jax.Array) -> jax.Array:  # [U, N, H, D] -> [U, G, H, L, D]
            return y[:, group.index].swapaxes(2, 3)

        q = grouped(rotate(split(self.q_proj(x))))
        k = grouped(rotate(split(self.k_proj(x))))
        v = grouped(split(self.v_proj(x)))
        logits = jnp.einsum("ughqd,ughkd->ughqk", q, k, preferred_element_type=jnp.float32)
        logits = logits * head_dim**-0.5
        valid = group.valid[None, :, None, None, :]
        logits = jnp.where(valid, logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("ughqk,ughkd->ugqhd", weights, v)
        out = out.reshape(out.shape[0], -1, heads * head_dim)[:, group.inverse]
        return self.proj(out)


class GatedMLP(nnx.Module):
    """Qwen2.5-VL's ``down(act(gate(x)) * up(x))``, every projection with a bias."""

    def __init__(self, config: QwenVisionConfig, *, dtypes: dict, rngs: nnx.Rngs):
        self.act = config.act
        width, hidden = config.width, config.mlp_dim
        with place_on_mesh_if_set():
            self.gate_proj = _linear(width, hidden, COLUMN_PARALLEL, dtypes, rngs)
            self.up_proj = _linear(width, hidden, COLUMN_PARALLEL, dtypes, rngs)
            self.down_proj = _linear(hidden, width, ROW_PARALLEL, dtypes, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        gate = GATED_ACTIVATIONS[self.act](self.gate_proj(x))
        return self.down_proj(gate * self.up_proj(x))


def _norm(config: QwenVisionConfig, dtypes: dict, rngs: nnx.Rngs) -> nnx.Module:
    """Qwen2-VL: LayerNorm; Qwen2.5-VL: RMSNorm (both eps 1e-6 in the reference)."""
    if config.variant == "qwen2_vl":
        return layer_norm(config.width, config.norm_eps, **dtypes, rngs=rngs)
    return RMSNorm(config.width, config.norm_eps, param_dtype=dtypes["param_dtype"])


class VisionBlock(nnx.Module):
    """``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``."""

    def __init__(self, config: QwenVisionConfig, *, dtypes: dict, rngs: nnx.Rngs):
        self.norm1 = _norm(config, dtypes, rngs)
        self.attn = VisionAttention(config, dtypes=dtypes, rngs=rngs)
        self.norm2 = _norm(config, dtypes, rngs)
        if config.variant == "qwen2_vl":
            self.mlp = MLP(config.width, config.mlp_dim, config.act, **dtypes, rngs=rngs)
        else:
            self.mlp = GatedMLP(config, dtypes=dtypes, rngs=rngs)

    def __call__(self, x, rotary, group):
        x = x + self.attn(self.norm1(x), rotary, group)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nnx.Module):
    """Each 2x2 group of neighbouring tokens (consecutive in token order) normalised,
    concatenated and projected by a GELU MLP to the language model's width."""

    def __init__(self, config: QwenVisionConfig, *, dtypes: dict, rngs: nnx.Rngs):
        merged = config.width * config.spatial_merge_size**2
        self.group_width = merged
        self.ln_q = _norm(config, dtypes, rngs)
        with place_on_mesh_if_set():
            self.fc1 = _linear(merged, merged, COLUMN_PARALLEL, dtypes, rngs)
            self.fc2 = _linear(merged, config.out_width, ROW_PARALLEL, dtypes, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        merged = self.ln_q(x).reshape(-1, self.group_width)
        return self.fc2(ACTIVATIONS["gelu"](self.fc1(merged)))


class QwenVisionTower(nnx.Module):
    """Flattened patches -> merged image tokens; see ``__call__``."""

    def __init__(
        self,
        config: QwenVisionConfig,
        *,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.config = config
        self.dtype = dtype
        dtypes = {"dtype": dtype, "param_dtype": param_dtype}
        c = config
        # The checkpoint's Conv3d with stride = kernel is one matmul per flattened patch; the
        # kernel keeps the Conv3d's axes [in, t, h, w, out] (flattened at call time).
        shape = (c.channels, c.temporal_patch_size, c.patch_size, c.patch_size, c.width)
        self.patch_embed = nnx.Param(_INIT(rngs.params(), shape, param_dtype))
        self.blocks = layer_stack.build(
            lambda rngs: VisionBlock(c, dtypes=dtypes, rngs=rngs), c.depth, c.stacking.scan, rngs
        )
        self.merger = PatchMerger(c, dtypes=dtypes, rngs=rngs)

    def __call__(self, patches: jax.Array, grids: tuple[Grid, ...]) -> jax.Array:
        """``patches`` [sum(t*h*w), patch_dim] as the image processor returns them (its
        ``pixel_values``), for images (or videos) of static ``grids`` ``((t, h, w), ...)`` ->
        image tokens [sum(t*h*w) // spatial_merge_size**2, out_width], image after image in
        the processor's order, the same tokens transformers' ``visual(...).pooler_output``
        gives. Under ``jax.jit``, close over ``grids`` (or mark it static)."""
        c = self.config
        grids = tuple(tuple(int(n) for n in grid) for grid in grids)
        tokens = sum(t * h * w for t, h, w in grids)
        if patches.shape != (tokens, c.patch_dim):
            raise ValueError(
                f"patches must be [{tokens}, {c.patch_dim}] for grids {grids} "
                f"(sum of t*h*w, channels*temporal_patch_size*patch_size**2); got {patches.shape}"
            )
        # Images of one grid (a training step's fixed shapes) run as units on a leading axis,
        # whose groups are the same in every unit, so the partitioner splits the images over
        # the batch's devices; mixed grids are one unit whose groups span every image.
        unit, units = (grids[:1], len(grids)) if len(set(grids)) == 1 else (grids, 1)
        layout = token_layout(
            unit, c.spatial_merge_size, None if c.window_size is None else c.window_units
        )
        images = groups(layout.frames)
        windows = images if layout.windows is None else groups(layout.windows)
        rotary = rotary_tables(layout.positions, c.head_dim, c.rope_theta)
        kernel = self.patch_embed[...].reshape(c.patch_dim, c.width).astype(self.dtype)
        x = (patches.astype(self.dtype) @ kernel).reshape(units, -1, c.width)
        full = [layer in c.fullatt_block_indexes for layer in range(c.depth)]

        def body(block, x, whole_image):
            if windows is images:  # no window attention: every block sees whole images
                return block(x, rotary, images), None
            if layer_stack.is_static(whole_image):
                return block(x, rotary, images if whole_image else windows), None
            attend = lambda group: lambda block, x: block(x, rotary, group)
            return nnx.cond(whole_image, attend(images), attend(windows), block, x), None

        xs = jnp.asarray(full) if c.stacking.scan else full
        x, _ = layer_stack.run(self.blocks, body, x, xs, remat=c.stacking.remat)
        return self.merger(x)
