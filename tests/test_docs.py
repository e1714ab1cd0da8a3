"""Every command in README.md and docs/ runs as written.

The fenced shell blocks (```bash / ```sh / ```shell) of the pages are read and each command is
checked against the code it names: `pip install` extras exist in setup.py; a
`python -m experiments.<script>` names a script that exists and defines every flag given (flag
values of the declared type, enum values allowed); its `--config=<file>:<variant>` loads and every
`--config.<field>=<value>` override names an existing field and has a value that field accepts
(ml_collections' type check); every path under `runs/main/` that a command reads exists after the
main job at smoke size, and every repository path it names exists. Placeholders such as
`<video_dir>` stand for what a user supplies and are not checked. The pages also never mention
issue numbers or files outside the repository.
"""
import ast
import functools
import glob
import importlib.util
import os
import re
import shlex

import pytest

from tests.conftest import parse_python

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md", *sorted(glob.glob("docs/**/*.md", root_dir=REPO, recursive=True))]
SHELL_BLOCK = re.compile(r"^```(?:bash|sh|shell)\n(.*?)^```", re.M | re.S)
# Flags whose value is written, not read: only their parent folder has to exist.
OUTPUT_FLAGS = {"out", "out_dir", "out_json", "workdir", "data_dir", "config.out_dir"}


def page_commands(page: str) -> list[list[str]]:
  """The commands of a page's shell blocks as argument lists (continuations joined, comments
  dropped, `a && b` split)."""
  with open(os.path.join(REPO, page), encoding="utf-8") as f:
    text = f.read()
  commands = []
  for block in SHELL_BLOCK.findall(text):
    for line in block.replace("\\\n", " ").splitlines():
      words = shlex.split(line, comments=True)
      while words:
        cut = words.index("&&") if "&&" in words else len(words)
        commands.append(words[:cut])
        words = words[cut + 1:]
  return commands


def all_commands() -> list[tuple[str, list[str]]]:
  return [(page, words) for page in PAGES for words in page_commands(page)]


def placeholder(value: str) -> bool:
  return "<" in value and ">" in value


@functools.cache
def script_flags(module: str) -> dict[str, tuple[str, list | None]]:
  """Flags a launch script defines: name -> (DEFINE_ kind, enum values or None), read from its
  source and from the experiments modules it imports (absl defines them at import)."""
  path = os.path.join(REPO, *module.split(".")) + ".py"
  assert os.path.exists(path), f"no script {module} ({path})"
  tree = parse_python(path)
  found = {}
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module == "experiments":
      for alias in node.names:
        if os.path.exists(os.path.join(REPO, "experiments", alias.name + ".py")):
          found.update(script_flags(f"experiments.{alias.name}"))
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr.startswith("DEFINE_") and node.args
            and isinstance(node.args[0], ast.Constant)):
      continue
    kind = node.func.attr.removeprefix("DEFINE_")
    choices = None
    if kind == "enum":
      choices = ast.literal_eval(node.args[2] if len(node.args) > 2 else next(
          k.value for k in node.keywords if k.arg == "enum_values"))
    default = node.args[1] if len(node.args) > 1 else None
    found[node.args[0].value] = (kind, choices,
                                 default.value if isinstance(default, ast.Constant) else None)
  return found


def load_config(spec: str):
  """`experiments/configs/x.py:variant` -> the ConfigDict get_config(variant) returns."""
  path, _, variant = spec.partition(":")
  assert os.path.exists(os.path.join(REPO, path)), f"no config file {path}"
  loader = importlib.util.spec_from_file_location(f"_docs_config_{abs(hash(path))}",
                                                  os.path.join(REPO, path))
  module = importlib.util.module_from_spec(loader)
  loader.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()


def parse_value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def check_override(config, key: str, text: str) -> None:
  """Sets `config.<key>` as the config flag would: the field must exist and take the value."""
  *parents, last = key.split(".")
  node = config
  for name in parents:
    assert name in node, f"--config.{key}: no field {name!r}"
    node = node[name]
  assert last in node, f"--config.{key}: no field {last!r} (fields: {sorted(node.keys())})"
  value = parse_value(text)
  current = node[last]
  if isinstance(current, (tuple, list)) and isinstance(value, str):
    value = tuple(v.strip() for v in value.split(","))  # a comma-separated flag value
  try:
    node[last] = value
  except TypeError as e:
    raise AssertionError(f"--config.{key}={text}: {e}") from e


def flag_items(args: list[str]) -> tuple[list[tuple[str, str | None]], list[str]]:
  """`--name=value` / `--name value` / `--noname` pairs, and the words after a lone `--`."""
  items, rest = [], []
  i = 0
  while i < len(args):
    word = args[i]
    if word == "--":
      rest = args[i + 1:]
      break
    assert word.startswith("--"), f"unexpected argument {word!r}"
    name, eq, value = word[2:].partition("=")
    items.append((name, value if eq else None))
    i += 1
  return items, rest


def check_python_command(words: list[str]) -> list[tuple[str, str]]:
  """Checks one `python -m experiments.<script> ...` command; returns the (flag, path) pairs it
  names, for the path checks."""
  assert words[:2] == ["python", "-m"], words
  module, args = words[2], words[3:]
  if module == "pytest":
    assert "tests" in args
    return []
  assert module.startswith("experiments."), f"{module}: not a launch script"
  defined = script_flags(module)
  items, rest = flag_items(args)
  paths = []
  configs = {name: default for name, (kind, _, default) in defined.items()
             if kind == "config_file"}
  given = dict(items)
  for name in configs:
    if given.get(name):
      configs[name] = given[name]
  loaded = {name: load_config(spec) for name, spec in configs.items() if spec}
  for name, value in items:
    root, _, sub = name.partition(".")
    if sub:
      assert root in loaded, f"{module}: --{name} but --{root} is not a config flag"
      if value is not None and not placeholder(value):
        check_override(loaded[root], sub, value)
      paths += [(name, p) for p in re.findall(r"(?:runs|data|docs)/[^\s'\"(),]+", value or "")]
      continue
    if name not in defined and name.startswith("no") and defined.get(name[2:], ("",))[0] == "bool":
      continue
    assert name in defined, f"{module}: no flag --{name} (flags: {sorted(defined)})"
    kind, choices, _ = defined[name]
    if value is None or placeholder(value):
      assert value is not None or kind == "bool", f"{module}: --{name} needs a value"
      continue
    if kind == "integer":
      int(value)
    elif kind == "float":
      float(value)
    elif kind == "bool":
      assert value.lower() in ("true", "false", "1", "0"), f"{module}: --{name}={value}"
    elif kind == "enum":
      assert value in choices, f"{module}: --{name}={value} not in {choices}"
    elif kind == "config_file":
      continue
    paths += [(name, p) for p in (value.split(",") if kind == "list" else [value])]
  if rest:
    paths += check_python_command(["python", "-m", *rest])
  return paths


def setup_extras() -> set[str]:
  tree = parse_python(os.path.join(REPO, "setup.py"))
  for node in ast.walk(tree):
    if isinstance(node, ast.keyword) and node.arg == "extras_require":
      return {k.value for k in node.value.keys}
  raise AssertionError("setup.py has no extras_require")


def test_pages_have_commands_and_the_readme_stays_short():
  commands = all_commands()
  assert len(commands) > 30
  assert {p for p, _ in commands} >= {"README.md", "docs/experiment.md", "docs/skills.md"}
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    assert len(f.read().splitlines()) <= 200


def test_ci_runs_the_readme_test_command():
  """CI installs exactly as the README says and runs its test command (Quickstart command 2)."""
  readme = page_commands("README.md")
  install_and_test = [c for c in readme if c[:2] == ["python", "-m"] and c[2] == "pytest"]
  assert len(install_and_test) == 1
  with open(os.path.join(REPO, ".ci", "run"), encoding="utf-8") as f:
    ci = f.read()
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    quickstart = f.read().split("# 2.", 1)[1].split("\n")[1].strip()
  assert quickstart in ci, (quickstart, ci)


@pytest.mark.parametrize("page", PAGES)
def test_every_command_names_real_scripts_flags_and_config_fields(page):
  extras = setup_extras()
  for words in page_commands(page):
    if words[:2] == ["pip", "install"]:
      for spec in words[2:]:
        found = re.fullmatch(r"\.\[([\w,]+)\]", spec)
        if found:
          assert set(found.group(1).split(",")) <= extras, (page, words)
      continue
    check_python_command(words)


def test_every_path_a_command_reads_exists_after_the_main_job(smoke_main_job):
  """Paths under runs/main/ are what the main job writes (read: it must exist; written: its
  folder must); other repository paths exist in the checkout."""
  missing = []
  for page, words in all_commands():
    if words[:2] != ["python", "-m"]:
      continue
    for flag, path in check_python_command(words):
      if placeholder(path) or not path.startswith(("runs/main/", "docs/", "experiments/")):
        continue
      if path.startswith("runs/main/"):
        local = os.path.join(smoke_main_job, path.removeprefix("runs/main/"))
      else:
        local = os.path.join(REPO, path)
      if flag in OUTPUT_FLAGS or flag.endswith("out_dir"):
        local = os.path.dirname(local.rstrip("/"))
      if not os.path.exists(local):
        missing.append(f"{page}: --{flag}={path}")
  assert not missing, "\n".join(missing)


@pytest.mark.parametrize("page", PAGES)
def test_pages_name_no_issues_and_no_outside_files(page):
  with open(os.path.join(REPO, page), encoding="utf-8") as f:
    text = f.read()
  assert not re.search(r"(?i:\bissues? #?\d+)|\.\./shared|\bMETHOD\.md|UNISKILL\.md", text), page
