"""Checkpoint damage that still decodes: a flipped bit in an array's bytes on disk.

Orbax stores a large array's bytes raw in the step's OCDBT data files, and tensorstore reads a
flipped bit there back as a different number without a word (measured on this model: every one of 12
single-bit flips spread over the largest data file of `params` and of `state` restored
different values). Each item's checksum, written with the step, turns that into damage like any
other: resuming falls back to the step before, and so does loading the params alone.
"""
import glob
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hilam_jax import training

CONFIG = {"model": "w128x256"}


@pytest.fixture(scope="module")
def mesh():
  return training.make_mesh(jax.devices()[:1])


def init_params(rng):
  return {"w": jax.random.normal(rng, (128, 256)), "b": jnp.zeros((256,))}


def states(mesh):
  """Two states with different params: what steps 1 and 2 hold."""
  tx = optax.adam(1e-3)
  first = training.create_train_state(init_params, tx, jax.random.PRNGKey(0), mesh)
  second = first.replace(step=first.step + 1,
                         params=jax.tree.map(lambda x: x + 0.5, first.params))
  return tx, first, second


def save_two_steps(directory, mesh):
  tx, first, second = states(mesh)
  ckpt = training.Checkpointer(directory, CONFIG)
  ckpt.save(1, first, force=True)
  ckpt.save(2, second, force=True)
  ckpt.close()
  return tx, first, second


def damaged_copies(directory, step, item, tmp_path, count=12):
  """Copies of `directory`, each with one bit flipped in `item` of `step`: at `count` positions
  spread over the largest of the item's data files (the arrays' bytes, zstd-compressed)."""
  files = glob.glob(os.path.join(directory, str(step), item, "**", "d", "*"), recursive=True)
  largest = max(files, key=os.path.getsize)
  size = os.path.getsize(largest)
  for k in range(count):
    copy = tmp_path / f"copy_{k}"  # a path of its own: tensorstore caches what it read by path
    shutil.copytree(directory, copy)
    target = copy / os.path.relpath(largest, directory)
    data = bytearray(target.read_bytes())
    data[size // 10 + k * (8 * size // 10) // count] ^= 0x10
    target.write_bytes(bytes(data))
    yield copy


def assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_flipped_bits_in_params_fall_back_when_loading_params(mesh, tmp_path, caplog):
  _, first, _ = save_two_steps(tmp_path / "run", mesh)
  for copy in damaged_copies(tmp_path / "run", 2, "params", tmp_path, count=4):
    with pytest.raises(training.ChecksumMismatchError, match="'params' of checkpoint .* step 2"):
      training.restore_params(copy, step=2)  # a step asked for: no fallback, named
    caplog.clear()
    assert_trees_equal(training.restore_params(copy), first.params)
    assert "step 2" in caplog.text and "damaged" in caplog.text
    assert sorted(os.listdir(copy)) == ["1", "2"]  # a reader renames nothing


def test_flipped_bits_in_params_item_alone_make_training_resume_from_the_step_before(
    mesh, tmp_path, caplog):
  """The state item intact, its params copy (what labeling and fine-tuning load) damaged: the
  resume notices and trains step 2 again instead of finishing on a damaged final step."""
  tx, first, second = save_two_steps(tmp_path / "run", mesh)
  copy = next(damaged_copies(tmp_path / "run", 2, "params", tmp_path, count=1))
  ckpt = training.Checkpointer(copy, CONFIG)
  restored = ckpt.restore(training.abstract_train_state(init_params, tx, mesh))
  assert_trees_equal(restored, first)
  assert "Checkpoint step 2" in caplog.text and "checksum" in caplog.text
  assert ckpt.all_steps() == [1] and (copy / "2.corrupt").is_dir()
  assert ckpt.save(2, second, force=True)  # saved again
  ckpt.close()
  assert_trees_equal(training.restore_params(copy), second.params)


def test_flipped_bits_in_state_fall_back_on_resume(mesh, tmp_path):
  tx, first, _ = save_two_steps(tmp_path / "run", mesh)
  abstract = training.abstract_train_state(init_params, tx, mesh)
  for copy in damaged_copies(tmp_path / "run", 2, "state", tmp_path, count=4):
    ckpt = training.Checkpointer(copy, CONFIG)
    with pytest.raises(training.ChecksumMismatchError, match="'state' of checkpoint .* step 2"):
      ckpt.restore(abstract, step=2)
    assert_trees_equal(ckpt.restore(abstract), first)
    assert ckpt.all_steps() == [1]
    ckpt.close()


def test_checkpoint_without_checksums_restores_unverified(mesh, tmp_path):
  """Steps written before checksums existed: no `checksums` item; they restore as before."""
  tx, _, second = save_two_steps(tmp_path, mesh)
  for step in ("1", "2"):
    for path in sorted(glob.glob(str(tmp_path / step / "checksums" / "*"))):
      os.remove(path)
    os.rmdir(tmp_path / step / "checksums")
  ckpt = training.Checkpointer(tmp_path, CONFIG)
  assert_trees_equal(ckpt.restore(training.abstract_train_state(init_params, tx, mesh)), second)
  ckpt.close()
  assert_trees_equal(training.restore_params(tmp_path), second.params)


def test_nan_advice_names_checkpoint_damage():
  with pytest.raises(training.NonFiniteError, match="checkpoint may be damaged"):
    training.check_finite({"loss": np.float32(np.nan)}, step=3)
