"""Region-R1's crop policy as a small structured model instead of a 3B MLLM writing tool calls.

The question picks its region by a position word ("top-left") or a colour ("the green object"),
so image and question must meet token by token: a pooled image vector has already averaged the
target away. A joint transformer runs over [decision token; question tokens; image tokens]; the
decision is read from the decision token, and the box from the image tokens, each of which votes
for every coordinate at its own position plus a learned offset, weighted by how well it answers
the question (see ``BoxHead``). Voting from positions makes localisation translation-equivariant:
what one scene teaches about "an edge here" holds everywhere, which a readout from a single
summary token would have to learn position by position.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import DTypeLike

from jaxrank.models.text import TextConfig, TextTransformer
from jaxrank.models.transformer import Encoder, layer_norm
from jaxrank.models.validation import require_choice, require_positive
from jaxrank.models.vit import VisionConfig, VisionTransformer
from jaxrank.region_r1.action import PolicyOutput

_FLOAT_DTYPES = ("float32", "bfloat16", "float16")
_TOKEN_INIT = nnx.initializers.normal(stddev=0.02)
_POSITION_FREQUENCIES = 8
# Initial standard deviation of every coordinate's distribution, in units of num_bins: wide enough
# that the initial policy is uniform to within 0.1 nats of logit, so GRPO starts by exploring.
_INITIAL_SPREAD = 2.0


@dataclasses.dataclass(frozen=True)
class CropPolicyConfig:
    """Image tower, question tower, ``fusion_depth`` joint layers (at the image tower's width,
    heads and MLP size) and ``num_bins`` bins per box coordinate.

    The fusion reads every image token, so the image tower's pooling is unused ('map' is
    refused: its attention head would be parameters that never train). The question tower's
    pooled vector queries the box head, so its ``pool`` matters; 'mean' suits short questions.
    """

    vision: VisionConfig
    text: TextConfig
    fusion_depth: int = 2
    num_bins: int = 16
    dtype: DTypeLike = jnp.float32
    param_dtype: DTypeLike = jnp.float32

    def __post_init__(self) -> None:
        owner = type(self).__name__
        require_positive(owner, fusion_depth=self.fusion_depth)
        if self.num_bins < 2:
            raise ValueError(
                f"{owner}.num_bins={self.num_bins} must be at least 2 (bins span [0, image_size])"
            )
        if self.vision.pool == "map":
            raise ValueError(
                f"{owner}.vision.pool='map' adds a pooling head the policy never uses; "
                "use 'cls' or 'mean'"
            )
        for name in ("dtype", "param_dtype"):
            value = getattr(self, name)
            try:
                dtype_name = jnp.dtype(value).name
            except TypeError as err:
                raise ValueError(f"{owner}.{name}={value!r} is not a dtype") from err
            require_choice(owner, name, dtype_name, _FLOAT_DTYPES)


def patch_centres(grid_size: int) -> np.ndarray:
    """(x, y) centres of a row-major patch grid as fractions of the image side: [grid², 2]."""
    centre = (np.arange(grid_size, dtype=np.float32) + 0.5) / grid_size
    return np.stack([np.tile(centre, grid_size), np.repeat(centre, grid_size)], axis=-1)


def _fourier_code(positions: np.ndarray) -> np.ndarray:
    """Fixed sin/cos features of [N, 2] fractional positions: [N, 4 * frequencies]."""
    angles = np.pi * positions[..., None] * np.arange(1, _POSITION_FREQUENCIES + 1)
    code = np.concatenate([np.sin(angles), np.cos(angles)], axis=-1)
    return code.reshape(positions.shape[0], -1).astype(np.float32)


class Fusion(nnx.Module):
    """Joint self-attention over [decision token; question tokens; image tokens].

    Image tokens get a projected fixed Fourier code of their position on top of the tower's
    learned one: a question's position word then has geometry to match from the first step,
    instead of waiting for small-initialised embeddings to grow. Returns the decision token's
    output [B, W] and the patch tokens' outputs [B, grid², W], normalised.
    """

    def __init__(
        self,
        config: CropPolicyConfig,
        *,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        vision = config.vision
        width, eps = vision.width, vision.layer_norm_eps
        dtypes = {"dtype": dtype, "param_dtype": param_dtype}
        self.class_token = vision.class_token
        self.grid_size = vision.grid_size
        self.position_projection = nnx.Linear(4 * _POSITION_FREQUENCIES, width, **dtypes, rngs=rngs)
        # The projection also tells question tokens apart from image tokens.
        self.text_projection = nnx.Linear(config.text.width, width, **dtypes, rngs=rngs)
        self.decision_token = nnx.Param(_TOKEN_INIT(rngs.params(), (width,), param_dtype))
        self.encoder = Encoder(
            width,
            config.fusion_depth,
            vision.heads,
            vision.mlp_dim,
            vision.act,
            eps,
            **dtypes,
            rngs=rngs,
        )
        self.norm = layer_norm(width, eps, **dtypes, rngs=rngs)

    def __call__(
        self, image_tokens: jax.Array, text_tokens: jax.Array, mask: jax.Array | None
    ) -> tuple[jax.Array, jax.Array]:
        batch, num_image = image_tokens.shape[:2]
        text = self.text_projection(text_tokens)
        code = _fourier_code(patch_centres(self.grid_size))
        position = self.position_projection(jnp.asarray(code, text.dtype))
        if self.class_token:
            position = jnp.pad(position, ((1, 0), (0, 0)))
        image = image_tokens.astype(text.dtype) + position
        decision = jnp.broadcast_to(self.decision_token[...], (batch, 1, text.shape[-1]))
        x = jnp.concatenate([decision.astype(text.dtype), text, image], axis=1)
        key_mask = None
        if mask is not None:
            ones = jnp.ones((batch, 1), bool)
            key_mask = jnp.concatenate(
                [ones, mask.astype(bool), jnp.ones((batch, num_image), bool)], axis=1
            )
        x = self.norm(self.encoder(x, key_mask=key_mask))
        patches = x[:, x.shape[1] - num_image + int(self.class_token) :]
        return x[:, 0], patches


class BoxHead(nnx.Module):
    """(patch features [B, N, W], question vector [B, Q]) -> box logits [B, 4, num_bins] float32.

    For each coordinate c, a query made from the question scores every patch (dot product with
    the patch's key); the softmax of the scores weighs the patches' votes. Patch t votes
    ``centre_t + offset_t[c]`` (its x for x1/x2, its y for y1/y2) with precision
    ``exp(log_precision_t[c])``; the coordinate's distribution is the discretised Gaussian
    ``-precision/2 * (bin - mean)²`` around the weighted mean vote, with the weighted
    log-precision, in bin units. One Gaussian
    per coordinate keeps every coordinate unimodal: the policy's uncertainty is about where an
    edge is, not which object. Offsets start at zero and the standard deviation at
    ``2 * num_bins`` bins, so the initial distribution is uniform to within 0.1 nats.
    """

    def __init__(
        self,
        width: int,
        query_width: int,
        grid_size: int,
        num_bins: int,
        *,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        dtypes = {"dtype": dtype, "param_dtype": param_dtype}
        zeros = nnx.initializers.zeros_init()
        initial_log_precision = -2 * np.log(_INITIAL_SPREAD * num_bins)
        self.num_bins = num_bins
        self.grid_size = grid_size
        self.query = nnx.Linear(query_width, 4 * width, **dtypes, rngs=rngs)
        self.key = nnx.Linear(width, width, **dtypes, rngs=rngs)
        self.offset = nnx.Linear(width, 4, kernel_init=zeros, **dtypes, rngs=rngs)
        self.log_precision = nnx.Linear(
            width,
            4,
            kernel_init=zeros,
            bias_init=nnx.initializers.constant(initial_log_precision),
            **dtypes,
            rngs=rngs,
        )

    def __call__(self, patches: jax.Array, query: jax.Array) -> jax.Array:
        width = patches.shape[-1]
        queries = self.query(query).reshape(query.shape[0], 4, width)
        scores = jnp.einsum(
            "bcd,bnd->bnc", queries, self.key(patches), preferred_element_type=jnp.float32
        )
        weights = jax.nn.softmax(scores * width**-0.5, axis=1)  # [B, N, 4]
        # x-coordinates (x1, x2) vote from the patch's x, y-coordinates from its y.
        anchors = patch_centres(self.grid_size)[:, [0, 1, 0, 1]]
        votes = anchors + self.offset(patches).astype(jnp.float32)
        mean = jnp.sum(weights * votes, axis=1) * (self.num_bins - 1)
        log_precision = self.log_precision(patches).astype(jnp.float32)
        precision = jnp.exp(jnp.sum(weights * log_precision, axis=1))
        distance = jnp.arange(self.num_bins, dtype=jnp.float32) - mean[..., None]
        return -0.5 * precision[..., None] * distance**2


class CropPolicy(nnx.Module):
    """(pixels [B, H, W, 3] normalised, question ids [B, L], mask [B, L] or None = all real)
    -> ``PolicyOutput`` logits in float32.

    The decision is read from the fusion's decision token; the box from its image tokens,
    queried by the pooled question. ``decision_head`` starts at zero (exactly 50/50) and
    ``box_head`` near-uniform, so GRPO's first groups explore the whole action space.
    """

    def __init__(self, config: CropPolicyConfig, *, rngs: nnx.Rngs):
        self.config = config
        dtypes = {"dtype": config.dtype, "param_dtype": config.param_dtype}
        width = config.vision.width
        self.vision = VisionTransformer(config.vision, **dtypes, rngs=rngs)
        self.text = TextTransformer(config.text, **dtypes, rngs=rngs)
        self.fusion = Fusion(config, **dtypes, rngs=rngs)
        self.decision_head = nnx.Linear(
            width, 2, kernel_init=nnx.initializers.zeros_init(), **dtypes, rngs=rngs
        )
        self.box_head = BoxHead(
            width, config.text.width, config.vision.grid_size, config.num_bins, **dtypes, rngs=rngs
        )

    def __call__(
        self, pixels: jax.Array, question_tokens: jax.Array, mask: jax.Array | None = None
    ) -> PolicyOutput:
        if question_tokens.shape[0] != pixels.shape[0]:
            raise ValueError(
                f"pixels batch {pixels.shape[0]} != question tokens batch "
                f"{question_tokens.shape[0]}"
            )
        _, image_tokens = self.vision(pixels)
        question, text_tokens = self.text(question_tokens, mask)
        decision, patches = self.fusion(image_tokens, text_tokens, mask)
        return PolicyOutput(
            decision_logits=self.decision_head(decision).astype(jnp.float32),
            box_logits=self.box_head(patches, question),
        )


def tiny_crop_policy(
    vocab_size: int,
    max_len: int = 16,
    image_size: int = 48,
    patch_size: int = 8,
    width: int = 64,
    depth: int = 2,
    heads: int = 4,
    fusion_depth: int = 2,
    num_bins: int = 16,
    dtype: DTypeLike = jnp.float32,
) -> CropPolicyConfig:
    """A CPU-sized policy for the synthetic world (96 px scenes seen at ``image_size``)."""
    return CropPolicyConfig(
        vision=VisionConfig(
            image_size, patch_size, width, depth, heads, mlp_dim=4 * width, act="gelu", pool="mean"
        ),
        text=TextConfig(
            vocab_size,
            max_len,
            width,
            depth,
            heads,
            mlp_dim=4 * width,
            act="gelu",
            causal=False,
            pool="mean",
        ),
        fusion_depth=fusion_depth,
        num_bins=num_bins,
        dtype=dtype,
    )
