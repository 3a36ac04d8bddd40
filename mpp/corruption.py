"""Which patch embeddings masked patch prediction corrupts, and how (Appendix B.1.2).

Per image, round(rate * N) of the N patches are chosen uniformly without replacement. Each chosen
patch is, independently as in BERT, replaced by the learned [mask] embedding (80%), by another
patch embedding (10%), or kept as it is (10%): the model must predict all of them, so it cannot
tell from the input which patches it will be asked about. The other patch is drawn from the
whole batch, or with `within_image` from the same image: on a sharded batch a draw from the
whole batch all-gathers every device's patch embeddings, one from the same image stays local.
Everything is drawn from one jax.random key, so the same key gives the same corruption.
"""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class Corruption:
  """One batch's corruption, drawn by `sample` and applied to the patch embeddings by `apply`; a
  pytree (`within_image` static), so it passes through jit."""
  corrupted: jax.Array  # bool [B, N]: the patches the loss is computed on.
  masked: jax.Array     # bool [B, N]: replaced by the [mask] embedding.
  replaced: jax.Array   # bool [B, N]: replaced by the patch at `source`.
  source: jax.Array     # int32 [B, N]: flat index into the batch's B*N patches, never itself.
  # All sources lie in their own image: `apply` then gathers along the patches only.
  within_image: bool = flax.struct.field(pytree_node=False, default=False)


def num_corrupted(num_patches: int, rate: float) -> int:
  """Patches corrupted per image: round(rate * num_patches), Python's round (halves to even)."""
  return int(round(rate * num_patches))


def sample(rng: jax.Array, batch: int, num_patches: int, *, rate: float = 0.5,
           mask_fraction: float = 0.8, random_fraction: float = 0.1,
           within_image: bool = False) -> Corruption:
  """The corruption of `batch` images of `num_patches` patches each, drawn from `rng`.

  Per image exactly `num_corrupted(num_patches, rate)` patches, chosen uniformly without
  replacement; each of them is masked with probability `mask_fraction`, replaced with
  probability `random_fraction`, else kept (BERT's 80/10/10 by default). A replacement comes
  from any of the batch's B * N patches, or with `within_image` from its own image's N, never
  the patch itself (unless it is the only one).
  """
  choose_rng, kind_rng, source_rng = jax.random.split(rng, 3)
  k = num_corrupted(num_patches, rate)
  # The ranks of i.i.d. uniform noise are a uniformly random permutation of each row.
  noise = jax.random.uniform(choose_rng, (batch, num_patches))
  ranks = jnp.argsort(jnp.argsort(noise, axis=-1), axis=-1)
  corrupted = ranks < k
  u = jax.random.uniform(kind_rng, (batch, num_patches))
  masked = corrupted & (u < mask_fraction)
  replaced = corrupted & (u >= mask_fraction) & (u < mask_fraction + random_fraction)
  own = jnp.arange(batch * num_patches, dtype=jnp.int32).reshape(batch, num_patches)
  if within_image:
    own_in_image = jnp.broadcast_to(jnp.arange(num_patches, dtype=jnp.int32), own.shape)
    source = own - own_in_image + _other_index(source_rng, own_in_image, num_patches)
  else:
    source = _other_index(source_rng, own, batch * num_patches)
  return Corruption(corrupted=corrupted, masked=masked, replaced=replaced, source=source,
                    within_image=within_image)


def _other_index(rng: jax.Array, own: jax.Array, count: int) -> jax.Array:
  """Uniform over [0, count) without `own` (`own` itself when count is 1): a draw from one
  fewer that skips one's own index."""
  if count == 1:
    return own
  other = jax.random.randint(rng, own.shape, 0, count - 1, jnp.int32)
  return jnp.where(other >= own, other + 1, other)


def apply(embeddings: jax.Array, corruption: Corruption, mask_embedding: jax.Array
          ) -> jax.Array:
  """[B, N, D] patch embeddings -> the corrupted ones the encoder sees."""
  b, n, d = embeddings.shape
  if corruption.within_image:  # A gather along each image's patches: no cross-device traffic.
    in_image = corruption.source - n * jnp.arange(b, dtype=jnp.int32)[:, None]
    others = jnp.take_along_axis(embeddings, in_image[..., None], axis=1)
  else:
    others = embeddings.reshape(b * n, d)[corruption.source.reshape(-1)].reshape(b, n, d)
  x = jnp.where(corruption.replaced[..., None], others, embeddings)
  return jnp.where(corruption.masked[..., None], mask_embedding.astype(x.dtype), x)
