"""Shared test fixtures: a small multi-shard RLDS dataset written through the project's writer."""
import ast
import atexit
import glob
import os
import shutil
import subprocess
import sys
import tempfile

# One persistent XLA compilation cache for the whole test run: every pytest-xdist worker and
# every process a test starts (launch scripts, the main job and its workers, notebooks) inherit
# it. The suite builds the same small programs many times over (the smoke-size main job three
# times, trainers run, killed and resumed), and a hit loads the executable a compile of the same
# program with the same flags builds, so results do not change. The run's own directory, removed
# when the run ends; a cache directory set by the caller is used as it is.
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
  _XLA_CACHE = tempfile.mkdtemp(prefix="hilam_tests_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _XLA_CACHE
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
  atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)

import filelock
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from data_pipeline import registry
from data_pipeline import schema
from data_pipeline.rlds_writer import ShardedRLDSWriter, episode_features

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE_MAIN_JOB = ["experiments.main", "--config=experiments/configs/main.py:smoke"]
# XLA's CPU backend (LLVM) optimisation off for the whole test run, in this process and every
# process a test starts (they inherit the environment; a test that sets XLA_FLAGS for a
# subprocess keeps it by appending). The suite's programs are tiny and compiled far more than
# they run (3-step policy runs, 4-episode evaluations, one-batch parity checks), and that
# optimisation is most of their compile time: the smoke main job's CPU time 342 -> 232 s,
# tests/test_lam_pipeline.py 106 -> 66 s. It changes float results in the last bits (a
# reduction order), which every comparison of two computations tolerates;
# test_lam_model's zero-z control, exact before, gets z_gain 1.2e-8.
OPT_FLAG = "--xla_backend_optimization_level=0"
if OPT_FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = " ".join(filter(None, (os.environ.get("XLA_FLAGS"), OPT_FLAG)))
# The smoke main job's environment (and that of the tests that run it again on a copy).
SMOKE_ENV = dict(os.environ)
SHARED_FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures")
BRIDGE_DIR = os.path.abspath(os.path.join(SHARED_FIXTURES, "bridge_dataset", "1.0.0"))

TOY_SHARDS, TOY_EPISODES_PER_SHARD = 3, 4


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  """In CI (CI set in the environment) a skipped test is a failure: the README's test command
  installs everything the suite needs, so a skip there means a missing install step."""
  del item, call
  outcome = yield
  report = outcome.get_result()
  if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
    report.outcome = "failed"
    report.longrepr = f"skipped in CI (CI={os.environ['CI']}), which must run every test: " \
                      f"{report.longrepr}"


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "slow: long tests of optional extras (e.g. LIBERO); deselect with -m 'not slow'")
  config.addinivalue_line(
      "markers", "manual: minutes-long checks (e.g. full-size parity) left out of a run without "
      "a -m expression; run them with -m slow (mark them slow too)")


def pytest_collection_modifyitems(config, items):
  """Deselects (does not skip: CI fails skips) `manual` tests unless -m selects tests itself."""
  if config.option.markexpr:
    return
  manual = [item for item in items if item.get_closest_marker("manual") is not None]
  if manual:
    config.hook.pytest_deselected(items=manual)
    items[:] = [item for item in items if item.get_closest_marker("manual") is None]


@registry.register("pipetest_*")
def standardize_pipetest(episode):
  """Test-only dataset: frame t of episode e is a flat grey image of intensity 8*t + e."""
  steps = episode["steps"]
  return {
      "observation": {"image_primary": schema.get_key(steps, "observation/image", "pipetest"),
                      "proprio": steps["observation"]["state"]},
      "action": steps["action"],
      "language_instruction": steps["language_instruction"],
      "is_first": steps["is_first"],
      "is_last": steps["is_last"],
      "episode_source": tf.strings.as_string(episode["episode_metadata"]["seed"]),
  }


def toy_episode(episode_index: int, num_steps: int) -> dict:
  t = np.arange(num_steps)
  images = np.broadcast_to((8 * t + episode_index)[:, None, None, None] % 256,
                           (num_steps, 16, 16, 3)).astype(np.uint8)
  return {
      "steps": {
          "observation": {"image": images,
                          "state": np.stack([t, np.full_like(t, episode_index)], -1)
                          .astype(np.float32)},
          "action": (t[:, None] * np.ones((1, 2))).astype(np.float32),
          "language_instruction": [f"task {episode_index % 3}"] * num_steps,
          "is_first": t == 0,
          "is_last": t == num_steps - 1,
      },
      "episode_metadata": {"seed": episode_index},
  }


def toy_features():
  return episode_features(
      {"observation": {"image": tfds.features.Image(shape=(16, 16, 3), encoding_format="jpeg"),
                       "state": tfds.features.Tensor(shape=(2,), dtype=np.float32)},
       "action": tfds.features.Tensor(shape=(2,), dtype=np.float32),
       "language_instruction": tfds.features.Text(),
       "is_first": tf.bool, "is_last": tf.bool},
      {"seed": tf.int64})


def write_toy_dataset(data_dir, name="pipetest_toy", splits=("train", "val")):
  writer = ShardedRLDSWriter(data_dir, name, toy_features(), config={"toy": True})
  for split_i, split in enumerate(splits):
    for shard in range(TOY_SHARDS):
      first = 100 * split_i + shard * TOY_EPISODES_PER_SHARD
      episodes = [toy_episode(e, num_steps=5 + e % 4)
                  for e in range(first, first + TOY_EPISODES_PER_SHARD)]
      writer.write_shard(split, shard, TOY_SHARDS, episodes)
  return writer.finalize()


@pytest.fixture(scope="session")
def toy_dataset(tmp_path_factory):
  return write_toy_dataset(str(tmp_path_factory.mktemp("toy")))


@pytest.fixture
def bridge_dir():
  if not os.path.exists(os.path.join(BRIDGE_DIR, "dataset_info.json")):
    pytest.skip(f"Bridge fixture not found at {BRIDGE_DIR} (expected ../shared/fixtures)")
  return BRIDGE_DIR


@pytest.fixture(scope="session")
def smoke_main_job(tmp_path_factory, worker_id):
  """The workdir of the whole experiment at smoke size (data -> LAM -> labels -> skills ->
  policies -> evaluation -> report), run once per test run: under pytest-xdist the first worker
  that asks runs it and the others wait on a file lock, then reuse it. Treat it as read-only:
  a test that runs the main job again works on `relocated_copy` of it. A failed run is not
  retried by every test that asks: its log is kept and each of them fails with it."""
  root = tmp_path_factory.getbasetemp()
  if worker_id != "master":
    root = root.parent  # the directory shared by every worker of this run
  workdir, failed = root / "smoke_main_job", root / "smoke_main_job.failed"
  with filelock.FileLock(str(root / "smoke_main_job.lock")):
    if failed.exists():
      pytest.fail(f"the smoke main job failed earlier in this run:\n{failed.read_text()}")
    if not (workdir / "report" / "results.json").exists():
      result = subprocess.run([sys.executable, "-m", *SMOKE_MAIN_JOB, f"--workdir={workdir}"],
                              cwd=REPO, capture_output=True, text=True, timeout=1800,
                              env=SMOKE_ENV)
      if result.returncode != 0:
        failed.write_text(result.stderr[-5000:])
        pytest.fail(f"the smoke main job failed:\n{result.stderr[-5000:]}")
  return str(workdir)


def parse_python(path: str) -> ast.Module:
  """`ast.parse` of a source file, retried on CPython 3.11.7's spurious "SystemError: AST
  constructor recursion depth mismatch" (seen once in a full test run, in a worker that had
  run many other tests; not reproduced alone). The constructor compares a recursion depth
  taken before and after it builds the tree; the likely cause, not established, is another
  thread changing the interpreter-wide recursion limit meanwhile. A retry parses the same
  text again; any other error is raised."""
  with open(path, encoding="utf-8") as f:
    text = f.read()
  for attempt in range(5):
    try:
      return ast.parse(text)
    except SystemError as e:
      if "recursion depth mismatch" not in str(e) or attempt == 4:
        raise
  raise AssertionError("unreachable")


def run_module(args: list[str], timeout: float = 600,
               env: dict | None = None) -> subprocess.CompletedProcess:
  """`python -m <args>` from the repository root (`env`: its environment, None: this process's);
  asserts it exits 0 (its stderr's tail shown)."""
  result = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def relocated_copy(workdir: str, destination: str, *, drop: tuple[str, ...] = ()) -> str:
  """A copy of a main-job workdir at `destination` that the main job resumes as its own: the
  stage results (stages/*.json), which name the workdir's paths, are rewritten to the copy's.
  `drop`: paths relative to the workdir left out of the copy (e.g. a stage and its outputs, to
  have the main job redo them). Modification times are kept."""
  shutil.copytree(workdir, destination,
                  ignore=lambda d, names: [n for n in names
                                           if os.path.relpath(os.path.join(d, n), workdir)
                                           in drop])
  for path in glob.glob(os.path.join(destination, "stages", "*.json")):
    stat = os.stat(path)
    with open(path) as f:
      text = f.read()
    with open(path, "w") as f:
      f.write(text.replace(workdir, destination))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
  return destination
