"""A dataset-free smoke training: the shared train step fits a tiny ViT to a fixed batch."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from supervised import objective
from vit.models.vit import VisionTransformer
from vit.training import optimizers, step as step_lib
from vit.training.state import TrainState


def test_loss_on_a_fixed_batch_falls_by_at_least_half():
  model = VisionTransformer(num_classes=4, patch_size=(4, 4), hidden_size=32, num_layers=2,
                            mlp_dim=64, num_heads=2)
  rng = np.random.default_rng(0)
  batch = {'image': rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8),
           'label': rng.integers(0, 4, 16).astype(np.int32)}
  params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False))
  params = params['params']
  opt = ml_collections.ConfigDict(dict(name='adam', learning_rate=3e-3, b1=0.9, b2=0.999,
                                       momentum=0.9, weight_decay=0.0, grad_clip_norm=1.0,
                                       warmup_steps=0, decay='constant'))
  tx, schedule = optimizers.build(opt, 40)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     ema_params=None, rng=jax.random.key_data(jax.random.key(1)),
                     skipped_steps=jnp.zeros((), jnp.int32))
  train_step = jax.jit(step_lib.make_train_step(objective.make_loss_fn(model), tx, schedule))
  losses = []
  for _ in range(40):
    state, metrics = train_step(state, batch)
    losses.append(float(metrics['loss']))
  assert losses[0] > 1.2  # about log(4) at the start: the head is zero-initialised
  assert losses[-1] < 0.5 * losses[0], losses
  assert int(state.step) == 40
