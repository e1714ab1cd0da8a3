"""Per-dataset standardize functions; importing this package registers all of them."""
from data_pipeline.standardize import babyai  # noqa: F401
from data_pipeline.standardize import bridge  # noqa: F401
from data_pipeline.standardize import libero  # noqa: F401
from data_pipeline.standardize import metaworld  # noqa: F401
from data_pipeline.standardize import video  # noqa: F401
