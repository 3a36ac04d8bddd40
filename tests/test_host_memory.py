"""vit.host_memory: the heap is trimmed after every XLA compilation, before the program runs."""
import jax
import jax.numpy as jnp

from vit import host_memory


def test_glibc_malloc_trim_is_found():
  assert host_memory._malloc_trim() is not None  # CI and the README's machines are Debian.


def test_the_heap_is_trimmed_after_each_compilation():
  host_memory.release_after_compiles()
  host_memory.release_after_compiles()  # Registering twice still trims once per compile.
  x = jnp.arange(11.0).block_until_ready()  # Making x compiles a program too.
  before = host_memory.trims
  jax.jit(lambda x: jnp.tanh(x) * 3.0)(x).block_until_ready()
  assert host_memory.trims == before + 1
  jax.jit(lambda x: jnp.tanh(x) * 4.0)(x).block_until_ready()
  assert host_memory.trims == before + 2
