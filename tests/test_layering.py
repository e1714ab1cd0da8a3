"""The architecture reads top-down: data → LAM → skill → policy → evaluation/experiment → launch
scripts. A module may import its own layer or lower ones, never an upper one, and no project
modules import each other in a circle (every import statement counts, function-level ones
included)."""
import ast
import os

import pytest

from tests.conftest import parse_python

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
    ("hilam_jax.experiment", "hilam_jax.report", "hilam_jax.worlds"),
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
  for node in ast.walk(parse_python(path)):
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


# Import circles allowed, as (importer, imported) edges left out of the cycle check: the dataset
# registry imports the built-in standardize plug-ins lazily (on first lookup), and each plug-in
# registers itself with the registry on import.
ALLOWED_CYCLE_EDGES = frozenset({("data_pipeline.registry", "data_pipeline.standardize")})
# Modules that import no project module: what their neighbours share, split out so that they do
# not import each other.
LEAVES = ("hilam_jax.lam.interface", "hilam_jax.language.base", "hilam_jax.skill.chunking_common")
# The only modules that may import torch (lazily): the converters of UniSkill's released weights.
TORCH_IMPORTERS = ("hilam_jax.lam.uniskill.convert", "hilam_jax.lam.uniskill.fdm_convert",
                   "hilam_jax.lam.uniskill.depth_anything_convert")


def import_targets(path: str, module: str, modules) -> set[str]:
  """The project modules that the import statements of `path` (the file of `module`) name.

  `from package import submodule` is an edge to the submodule only, `from package import name`
  one to the package; the __init__ of the packages on the way are not counted (every submodule
  import runs them, so counting them would make each package a circle with its members).
  """
  def resolve(name):  # its longest prefix that is a project module
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
      if ".".join(parts[:end]) in modules:
        return ".".join(parts[:end])
    return None

  is_package = os.path.basename(path) == "__init__.py"
  targets = set()
  for node in ast.walk(parse_python(path)):
    if isinstance(node, ast.Import):
      targets.update(resolve(alias.name) for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: from the importer's package
        package = module.split(".")[:len(module.split(".")) - node.level + is_package]
        base = ".".join(package + ([base] if base else []))
      for alias in node.names:
        submodule = f"{base}.{alias.name}"
        targets.add(submodule if submodule in modules else resolve(base))
  return {t for t in targets if t is not None and t != module}


def import_graph(modules: dict[str, str]) -> dict[str, set[str]]:
  """{module: the project modules it imports}, every import statement counted."""
  return {module: import_targets(path, module, modules) for module, path in modules.items()}


def import_cycles(modules: dict[str, str] | None = None) -> list[list[str]]:
  """Each strongly connected component of more than one module in the import graph (minus
  ALLOWED_CYCLE_EDGES), sorted."""
  modules = dict(project_modules()) if modules is None else modules
  graph = {m: {t for t in edges if (m, t) not in ALLOWED_CYCLE_EDGES}
           for m, edges in import_graph(modules).items()}
  index, low, stack, on_stack, components = {}, {}, [], set(), []

  def visit(root):  # iterative Tarjan
    work = [(root, iter(sorted(graph[root])))]
    index[root] = low[root] = len(index)
    stack.append(root)
    on_stack.add(root)
    while work:
      node, children = work[-1]
      child = next(children, None)
      if child is not None:
        if child not in index:
          index[child] = low[child] = len(index)
          stack.append(child)
          on_stack.add(child)
          work.append((child, iter(sorted(graph[child]))))
        elif child in on_stack:
          low[node] = min(low[node], index[child])
        continue
      work.pop()
      if work:
        low[work[-1][0]] = min(low[work[-1][0]], low[node])
      if low[node] == index[node]:
        component = []
        while True:
          member = stack.pop()
          on_stack.discard(member)
          component.append(member)
          if member == node:
            break
        if len(component) > 1:
          components.append(sorted(component))

  for module in sorted(graph):
    if module not in index:
      visit(module)
  return sorted(components)


def describe_cycles(components: list[list[str]],
                    modules: dict[str, str] | None = None) -> list[str]:
  """Per component, its members and the edges among them (for the failure message)."""
  modules = dict(project_modules()) if modules is None else modules
  graph = import_graph(modules)
  lines = []
  for component in components:
    members = set(component)
    edges = sorted(f"{a} -> {b}" for a in component for b in graph[a] & members
                   if (a, b) not in ALLOWED_CYCLE_EDGES)
    lines.append("{" + ", ".join(component) + "}: " + "; ".join(edges))
  return lines


def test_no_import_runs_against_the_flow():
  assert violations() == []


def test_the_check_sees_upward_imports(tmp_path, monkeypatch):
  """The walk finds function-level imports and ranks modules by their longest prefix."""
  path = tmp_path / "m.py"
  path.write_text("def f():\n  from hilam_jax.policy import trainer\n")
  assert "hilam_jax.policy.trainer" in imports_of(str(path))
  assert layer_of("hilam_jax.lam.trainer") < layer_of("hilam_jax.skill.model")
  assert layer_of("hilam_jax.experiment") > layer_of("hilam_jax.evaluation.babyai")
  assert layer_of("hilam_jax.worlds.metaworld") == layer_of("hilam_jax.experiment")
  assert layer_of("hilam_jax.training.loop") < layer_of("hilam_jax.lam")
  assert layer_of("numpy") is None
  with pytest.raises(AssertionError):
    monkeypatch.setattr(
        "tests.test_layering.project_modules",
        lambda: iter([("hilam_jax.lam.model", str(path))]))
    test_no_import_runs_against_the_flow()


def test_no_import_cycles():
  assert describe_cycles(import_cycles()) == []


def test_the_cycle_check_sees_function_level_circles(tmp_path):
  """A circle closed by a function-level import is found; the allowed registry edge is not."""
  (tmp_path / "a.py").write_text("from hilam_jax.lam import b\n")
  (tmp_path / "b.py").write_text("def f():\n  from hilam_jax.lam.a import x\n")
  (tmp_path / "c.py").write_text("from hilam_jax.lam import a\n")
  modules = {"hilam_jax.lam.a": str(tmp_path / "a.py"), "hilam_jax.lam.b": str(tmp_path / "b.py"),
             "hilam_jax.lam.c": str(tmp_path / "c.py")}
  assert import_cycles(modules) == [["hilam_jax.lam.a", "hilam_jax.lam.b"]]
  (tmp_path / "r.py").write_text("def f():\n  import data_pipeline.standardize\n")
  (tmp_path / "s.py").write_text("from data_pipeline import registry\n")
  allowed = {"data_pipeline.registry": str(tmp_path / "r.py"),
             "data_pipeline.standardize": str(tmp_path / "s.py")}
  assert import_cycles(allowed) == []
  (tmp_path / "d.py").write_text("from . import e\n")  # relative imports count too
  (tmp_path / "e.py").write_text("from hilam_jax.lam.d import y\n")
  relative = {"hilam_jax.lam.d": str(tmp_path / "d.py"), "hilam_jax.lam.e": str(tmp_path / "e.py")}
  assert import_cycles(relative) == [["hilam_jax.lam.d", "hilam_jax.lam.e"]]


def test_leaves_import_no_project_module_and_only_converters_import_torch():
  modules = dict(project_modules())
  graph = import_graph(modules)
  assert {m: graph[m] for m in LEAVES} == {m: set() for m in LEAVES}
  torch_importers = {m for m, path in modules.items()
                     if any(n == "torch" or n.startswith("torch.") for n in imports_of(path))
                     and m.startswith("hilam_jax")}
  assert torch_importers <= set(TORCH_IMPORTERS), sorted(torch_importers - set(TORCH_IMPORTERS))
