"""Converts a folder of video files into an action-free RLDS dataset.

  python experiments/convert_videos.py --config=experiments/configs/convert_videos.py:default \
      --config.video_dir=/path/to/videos --data_dir=/path/to/rlds

More launch commands are in the config's docstring; the logic is in
`data_pipeline.generators.video_files`.
"""
import os

from absl import app
from absl import flags
from ml_collections import config_flags

from data_pipeline.generators import video_files

from hilam_jax import preemption

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs", "convert_videos.py") + ":default",
    "Conversion config.",
    lock_config=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Parent folder of the written dataset.",
                                required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  result = video_files.convert_from_config(_CONFIG.value, _DATA_DIR.value)
  print(f"wrote {result.dataset_dir}: {result.num_written} episodes this run, "
        f"{result.num_resumed_shards} shards resumed, {len(result.unreadable)} unreadable videos "
        f"skipped, {result.num_missing_captions} videos without caption")


if __name__ == "__main__":
  app.run(preemption.exit_on_preemption(main))
