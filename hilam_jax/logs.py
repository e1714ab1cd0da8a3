"""Console hygiene for launch scripts: keep the progress lines readable."""
import logging as py_logging

from absl import logging

_NOISY = ("orbax", "tensorflow_datasets/core/dataset_info", "tensorflow_datasets/core/reader")


class _DropNoisy(py_logging.Filter):
  """Drops INFO records from libraries that log every checkpoint file rename."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return record.levelno > py_logging.INFO or not any(n in record.pathname for n in _NOISY)


def quiet_library_logs() -> None:
  """Hides orbax / tfds INFO chatter (warnings and errors still show)."""
  logging.get_absl_handler().addFilter(_DropNoisy())
