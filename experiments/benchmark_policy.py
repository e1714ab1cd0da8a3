"""Control latency: one `act` call of the hierarchical policy (pi^h + pi^l) vs BAKU, batch 1.

  python -m experiments.benchmark_policy                      # the experiment's "cpu" size
  python -m experiments.benchmark_policy --model_size=small --num_calls=300

Both policies are built at the same size with freshly initialised parameters (latency does not
depend on the values) and run exactly as at evaluation time: jitted forward, cached instruction
embedding, ACT temporal aggregation. Reported: median / p90 milliseconds per `act` over
`num_calls` calls after warm-up, interleaved (BAKU, HiLAM, BAKU, ...) so machine load affects both
alike, plus the networks' forward time alone. Target: <= 5 ms per step for HiLAM.
Prints one line `RESULT {json}`.
"""
import json
import time

from absl import app
from absl import flags
import numpy as np

_SIZE = flags.DEFINE_string("model_size", "cpu", "Model size preset (hilam_jax.policy.config.model).")
_CALLS = flags.DEFINE_integer("num_calls", 500, "Timed act() calls per policy.")
_ENCODER = flags.DEFINE_string("lang_encoder", "minilm", "Language encoder (cached per string).")
_SKILL_DIM = flags.DEFINE_integer("skill_dim", 64, "Size of the skill z̄^2 given to pi^l.")
TARGET_MS = 5.0


def _network(size: str, heads: dict, encoder, condition_dim: int = 0):
  import jax  # pylint: disable=g-import-not-at-top
  from hilam_jax.policy import baku, networks, policies  # pylint: disable=g-import-not-at-top
  from hilam_jax.policy import config as policy_defaults  # pylint: disable=g-import-not-at-top
  config = policy_defaults.default_config("baku")
  if condition_dim:  # pi^l(o, skill): role "low", no language (the default lang_for_low=False)
    config.role = "low"
  config.model = policy_defaults.model(size, proprio_dim=4, condition_dim=condition_dim)
  config.heads = heads
  cfg = networks.model_config(config)
  module = baku.BakuPolicy(cfg)
  params = module.init(jax.random.key(0), networks.example_inputs(cfg, (56, 56)))["params"]
  return policies.PolicyNetwork(module, params, image_size=(56, 56), encoder=encoder)


def _time_calls(fn, num_calls: int) -> list[float]:
  times = []
  for _ in range(num_calls):
    start = time.perf_counter()
    fn()
    times.append((time.perf_counter() - start) * 1e3)
  return times


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # pylint: disable=g-import-not-at-top
  from hilam_jax import logs
  from hilam_jax.language import CachedEncoder, make_encoder
  from hilam_jax.policy import baku, policies
  logs.quiet_library_logs()
  encoder = CachedEncoder(make_encoder(_ENCODER.value))
  action = {"action": {"kind": "categorical", "dim": 7, "target": "action"}}
  skill = {"skill": {"kind": "latent", "dim": _SKILL_DIM.value, "target": "s2"}}
  flat = policies.FlatPolicy(_network(_SIZE.value, action, encoder))
  high = _network(_SIZE.value, skill, encoder)
  low = _network(_SIZE.value, action, encoder, condition_dim=_SKILL_DIM.value)
  hier = policies.HierarchicalPolicy(high, low)
  rng = np.random.default_rng(0)
  obs = {"image_primary": rng.integers(0, 255, (1, 56, 56, 3), dtype=np.uint8),
         "proprio": np.eye(4, dtype=np.float32)[:1]}
  instruction = ["put the red ball next to the blue key"]
  first = np.array([False])
  for policy in (flat, hier):
    policy.reset(1)
    for i in range(20):  # compile + warm caches
      policy.act(obs, instruction, np.array([i == 0]))
  times = {"baku": [], "hilam": []}
  for _ in range(_CALLS.value // 10):  # interleaved blocks of 10 calls
    times["baku"] += _time_calls(lambda: flat.act(obs, instruction, first), 10)
    times["hilam"] += _time_calls(lambda: hier.act(obs, instruction, first), 10)
  forward = {}
  for name, net, cond in (("baku_network", flat.network, None),
                          ("hilam_high_network", high, None),
                          ("hilam_low_network", low, np.zeros((1, _SKILL_DIM.value), np.float32))):
    forward[name] = float(np.median(_time_calls(lambda: net.predict(obs, instruction, cond),
                                                _CALLS.value)))
  result = {
      "model_size": _SIZE.value,
      "params": {"baku": baku.count_params(flat.network.params),
                 "hilam": baku.count_params(high.params) + baku.count_params(low.params)},
      "act_ms_median": {k: float(np.median(v)) for k, v in times.items()},
      "act_ms_p90": {k: float(np.percentile(v, 90)) for k, v in times.items()},
      "forward_ms_median": forward, "num_calls": len(times["hilam"]), "target_ms": TARGET_MS,
  }
  result["hilam_meets_target"] = result["act_ms_median"]["hilam"] <= TARGET_MS
  for name in ("baku", "hilam"):
    print(f"{name:6s} act(): median {result['act_ms_median'][name]:.2f} ms, "
          f"p90 {result['act_ms_p90'][name]:.2f} ms ({result['params'][name]:,} params)")
  print("RESULT " + json.dumps(result))


if __name__ == "__main__":
  app.run(main)
