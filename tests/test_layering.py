"""The architecture reads top-down: data → LAM → skill → policy → evaluation/experiment → launch
scripts. A module may import its own layer or lower ones, never an upper one (every import
statement counts, function-level ones included)."""
import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Lowest first; a module's layer is that of its longest matching prefix.
LAYERS = (
    ("data_pipeline",),
    ("hilam_jax", "hilam_jax.config_io", "hilam_jax.logs", "hilam_jax.benchmarking",
     "hilam_jax.probing", "hilam_jax.training", "hilam_jax.language"),
    ("hilam_jax.lam",),
    ("hilam_jax.skill",),
    ("hilam_jax.policy",),
    ("hilam_jax.evaluation",),
    ("hilam_jax.experiment", "hilam_jax.report"),
    ("experiments",),
)
# Within a layer, pairs that must not depend on each other: (importer prefix, forbidden prefix).
FORBIDDEN = (
    ("data_pipeline.sim", "data_pipeline.generators"),       # generators use the simulators
    ("hilam_jax.evaluation", "data_pipeline.generators"),    # evaluation uses the simulators
    ("hilam_jax.policy.policies", "hilam_jax.policy.trainer"),  # test time without the trainer
)


def layer_of(module: str) -> int | None:
  best, best_len = None, -1
  for rank, prefixes in enumerate(LAYERS):
    for prefix in prefixes:
      if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
        best, best_len = rank, len(prefix)
  return best


def project_modules():
  for package in ("data_pipeline", "hilam_jax", "experiments"):
    for root, _, files in os.walk(os.path.join(REPO, package)):
      for name in files:
        if name.endswith(".py"):
          path = os.path.join(root, name)
          rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
          yield rel.removesuffix(".__init__"), path


def imports_of(path: str) -> set[str]:
  names = set()
  for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names.add(node.module)
      names.update(f"{node.module}.{alias.name}" for alias in node.names)
  return names


def violations():
  found = []
  for module, path in project_modules():
    own = layer_of(module)
    for imported in imports_of(path):
      other = layer_of(imported)
      if other is not None and own is not None and other > own:
        found.append(f"{module} imports {imported} (layer {other} > {own})")
      for importer, forbidden in FORBIDDEN:
        if module.startswith(importer) and (imported == forbidden
                                            or imported.startswith(forbidden + ".")):
          found.append(f"{module} imports {imported} (a forbidden dependency)")
  return sorted(set(found))


def test_no_import_runs_against_the_flow():
  assert violations() == []


def test_the_check_sees_upward_imports(tmp_path, monkeypatch):
  """The walk finds function-level imports and ranks modules by their longest prefix."""
  path = tmp_path / "m.py"
  path.write_text("def f():\n  from hilam_jax.policy import trainer\n")
  assert "hilam_jax.policy.trainer" in imports_of(str(path))
  assert layer_of("hilam_jax.lam.trainer") < layer_of("hilam_jax.skill.model")
  assert layer_of("hilam_jax.experiment") > layer_of("hilam_jax.evaluation.babyai")
  assert layer_of("hilam_jax.training.loop") < layer_of("hilam_jax.lam")
  assert layer_of("numpy") is None
  with pytest.raises(AssertionError):
    monkeypatch.setattr(
        "tests.test_layering.project_modules",
        lambda: iter([("hilam_jax.lam.model", str(path))]))
    test_no_import_runs_against_the_flow()
