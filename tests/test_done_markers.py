""""Done" markers and result files: written atomically, and one that does not parse means "not
done" (redone, with a warning), never "done". Real files; the redone steps fail fast on purpose
(a missing input) so that nothing trains."""
import json
import os

import pytest

from data_pipeline import run_info
from data_pipeline import schema
from data_pipeline.rlds_writer import ShardedRLDSWriter
from hilam_jax import experiment
from hilam_jax.policy import config as policy_config
from tests import conftest


def _replaced_on_write(path, write):
  """Whether `write()` replaced `path` by a new file (temp file + rename) instead of rewriting
  it in place: a hard link to the old file keeps the old content only then."""
  link = path + ".link"
  os.link(path, link)
  before = open(link, "rb").read()
  write()
  replaced = open(link, "rb").read() == before and open(path, "rb").read() != before
  os.remove(link)
  return replaced


def test_write_run_info_replaces_the_file_atomically(tmp_path):
  path = run_info.write_run_info(str(tmp_path), {"a": 1})
  assert _replaced_on_write(path, lambda: run_info.write_run_info(str(tmp_path), {"a": 2}))
  assert json.load(open(path))["config"] == {"a": 2}
  assert os.listdir(tmp_path) == ["run_info.json"]  # no temporary file left behind


def test_read_done_json(tmp_path, caplog):
  path = str(tmp_path / "result.json")
  assert run_info.read_done_json(path) is None
  run_info.write_json_atomic(path, {"success_rate": 0.5})
  assert run_info.read_done_json(path) == {"success_rate": 0.5}
  with open(path, "w") as f:
    f.write('{"success_rate": 0.')  # cut short
  assert run_info.read_done_json(path) is None
  assert "does not parse" in caplog.text and "result.json" in caplog.text


def _cut_short(path, text='{"result": {"a": '):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)


def test_a_stage_whose_result_does_not_parse_is_redone(tmp_path, caplog):
  path = str(tmp_path / "stages" / "2_lam.json")
  _cut_short(path)
  calls = []
  out = experiment._stage(str(tmp_path), "2_lam", lambda: calls.append(1) or {"a": 1})
  assert calls == [1] and out["result"] == {"a": 1}
  assert "does not parse" in caplog.text
  assert json.load(open(path))["result"] == {"a": 1}
  # Now done: reused, not run again.
  assert experiment._stage(str(tmp_path), "2_lam", lambda: calls.append(2))["result"] == {"a": 1}
  assert calls == [1]


def test_a_policy_run_whose_final_metrics_do_not_parse_is_trained_again(toy_dataset, tmp_path):
  config = policy_config.default_config("tiny")
  config.data.train = ({"dataset_dir": toy_dataset},)
  config.heads = {"action": {"kind": "continuous", "dim": 2, "target": "action"}}
  config.num_steps = 0  # the retraining stops at the trainer's first check
  workdir = str(tmp_path / "run")
  _cut_short(os.path.join(workdir, "final_metrics.json"), '{"loss": 0.1')
  with pytest.raises(ValueError, match=r"config\.num_steps must be"):
    experiment.train_policy_job(workdir, config.to_dict())


def test_an_evaluation_whose_result_does_not_parse_is_run_again(tmp_path):
  out_dir = str(tmp_path / "eval")
  _cut_short(os.path.join(out_dir, "result.json"), '{"success_rate": 1.0, "num_ep')
  missing = str(tmp_path / "no_policy")
  with pytest.raises(FileNotFoundError, match="no_policy"):  # the evaluation is attempted
    experiment.evaluate_job(out_dir, {"kind": "flat", "workdir": missing},
                            {"actions": "argmax", "seed": 0}, "babyai", "level",
                            str(tmp_path / "demos"), high_every=1)


def test_a_dataset_shard_whose_progress_record_does_not_parse_is_written_again(tmp_path,
                                                                               caplog):
  conftest.write_toy_dataset(str(tmp_path), splits=("train",))
  dataset_dir = os.path.join(str(tmp_path), "pipetest_toy", "1.0.0")
  progress = os.path.join(dataset_dir, "_progress")
  assert sorted(os.listdir(progress)) == ["config.json", "train-00000.json", "train-00001.json",
                                          "train-00002.json"]
  record = os.path.join(progress, "train-00001.json")
  _cut_short(record, '{"num_examples": 4, "num_by')
  writer = ShardedRLDSWriter(str(tmp_path), "pipetest_toy", conftest.toy_features(),
                             config={"toy": True})
  assert writer.is_done("train", 0) and not writer.is_done("train", 1)
  assert "train-00001.json does not parse" in caplog.text
  episodes = [conftest.toy_episode(e, num_steps=5 + e % 4) for e in range(4, 8)]
  assert _replaced_on_write(record, lambda: writer.write_shard("train", 1, 3, episodes))
  assert writer.is_done("train", 1)
  assert json.load(open(record))["num_examples"] == 4
  writer.finalize()


def test_benchmark_regime_run_whose_result_does_not_parse_is_redone(tmp_path):
  from experiments import benchmark_regime  # pylint: disable=g-import-not-at-top
  from experiments.configs import benchmark_regime as regime  # pylint: disable=g-import-not-at-top
  run = {"name": "r", "seed": 0, "fraction": 1.0, "regime": "fraction"}
  _cut_short(str(tmp_path / "runs" / "r" / "result.json"), '{"success_rate": 0.')
  with pytest.raises(schema.DatasetNotFoundError):  # trained again: its dataset is missing
    benchmark_regime._train_and_evaluate(regime.get_config("default"), run,
                                         str(tmp_path / "missing" / "1.0.0"), str(tmp_path))


def test_skill_study_seed_whose_done_marker_does_not_parse_is_redone(tmp_path):
  from experiments import skill_study  # pylint: disable=g-import-not-at-top
  _cut_short(str(tmp_path / "default" / "seed0" / "done.json"), '{"final_eval": {"lo')
  with pytest.raises(FileNotFoundError, match="no label manifest"):  # trained again
    skill_study.run_seed("default", 0, str(tmp_path), str(tmp_path / "no_labels"), "tiny", 2,
                         "val")
