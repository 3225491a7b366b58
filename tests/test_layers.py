"""Imports flow one way: the layer table in README.md ("Where things are")
is parsed, every `jaxslm/**.py` module is placed in a layer, and each import
(top-level or inside a function) must point to the same layer or one below.
There is no import cycle, and nothing in the library imports a trainer."""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
TRAINERS = ("jaxslm.train.pretrain", "jaxslm.train.finetune", "jaxslm.train.grpo")


def layer_table(readme: str) -> list[list[str]]:
  """[[path, ...] per layer, top first] from the README's layer block: the
  bullet lines between `<!-- layers -->` and `<!-- /layers -->`, each a list
  of `code` paths before its colon."""
  m = re.search(r"<!-- layers -->(.*?)<!-- /layers -->", readme, re.S)
  assert m, "README.md lacks its layer table (<!-- layers --> ... <!-- /layers -->)"
  layers = []
  for line in m.group(1).splitlines():
    if line.startswith("- "):
      layers.append(re.findall(r"`([^`]+)`", line.split(":", 1)[0]))
  return layers


def module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def modules() -> dict[str, pathlib.Path]:
  return {module_name(p): p for p in sorted((ROOT / "jaxslm").rglob("*.py"))}


def layer_of(name: str, layers: list[list[str]]) -> int | None:
  """Index of the layer whose most specific path covers module `name` (0 = top)."""
  best, best_len = None, -1
  for i, entries in enumerate(layers):
    for entry in entries:
      e = entry.rstrip("/")
      e = e[:-3] if e.endswith(".py") else e
      e = e.replace("/", ".")
      if e.endswith("__init__"):
        e = e[:-len(".__init__")]
      covers = name == e or (entry.endswith("/") and name.startswith(e + "."))
      if covers and len(e) > best_len:
        best, best_len = i, len(e)
  return best


def imports(name: str, path: pathlib.Path, known: dict) -> list[tuple[int, str]]:
  """(line, module) for every jaxslm module `name` imports, resolved to the
  module itself (`from jaxslm import lora` is jaxslm.lora, `from jaxslm import
  load` the package)."""
  def resolve(target: str) -> str:
    while target not in known:
      target = target.rpartition(".")[0]
    return target

  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  out = []
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      out += [(node.lineno, resolve(a.name)) for a in node.names if a.name.split(".")[0] == "jaxslm"]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        up = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(up + ([base] if base else []))
      if base.split(".")[0] != "jaxslm":
        continue
      for a in node.names:
        full = f"{base}.{a.name}"
        out.append((node.lineno, full if full in known else resolve(base)))
  return [(line, m) for line, m in out if m != name]


@pytest.fixture(scope="module")
def graph():
  layers = layer_table((ROOT / "README.md").read_text())
  known = modules()
  edges = {name: imports(name, path, known) for name, path in known.items()}
  return layers, known, edges


def test_layer_table_is_parsed():
  layers = layer_table((ROOT / "README.md").read_text())
  assert len(layers) >= 4 and all(layers)
  assert any("launch/" in entries for entries in layers)


def test_every_module_has_a_layer(graph):
  layers, known, _ = graph
  missing = [known[n].relative_to(ROOT).as_posix() for n in known if layer_of(n, layers) is None]
  assert not missing, (f"modules in no layer of README.md's 'Where things are': {missing}; "
                       "add them to the line of their layer")


def test_imports_point_down(graph):
  layers, known, edges = graph
  bad = []
  for name, targets in edges.items():
    mine = layer_of(name, layers)
    for line, target in targets:
      theirs = layer_of(target, layers)
      if theirs is not None and mine is not None and theirs < mine:
        bad.append(f"{known[name].relative_to(ROOT)}:{line} imports {target} "
                   f"(layer {layers[theirs]} is above {layers[mine]})")
  assert not bad, "imports from a lower layer to a higher one:\n" + "\n".join(bad)


def test_nothing_imports_a_trainer(graph):
  _, known, edges = graph
  bad = [f"{known[name].relative_to(ROOT)}:{line} imports the trainer {target}"
         for name, targets in edges.items() for line, target in targets
         if target in TRAINERS and name != target]
  assert not bad, "only launchers import trainers:\n" + "\n".join(bad)


def find_cycle(edges: dict[str, list[tuple[int, str]]]) -> list[str] | None:
  """One import cycle as [a, b, ..., a], or None (depth-first search)."""
  state: dict[str, int] = {}   # 1 on the stack, 2 done
  stack: list[str] = []

  def visit(node: str) -> list[str] | None:
    state[node] = 1
    stack.append(node)
    for _, nxt in edges.get(node, []):
      if state.get(nxt) == 1:
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    stack.pop()
    state[node] = 2
    return None

  for node in sorted(edges):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_no_import_cycles(graph):
  _, known, edges = graph
  cycle = find_cycle(edges)
  if cycle:
    lines = []
    for a, b in zip(cycle, cycle[1:]):
      line = next(ln for ln, t in edges[a] if t == b)
      lines.append(f"{known[a].relative_to(ROOT)}:{line} imports {b}")
    pytest.fail("import cycle:\n" + "\n".join(lines))


def test_the_checks_catch_what_they_should():
  """The checker itself: a cycle and an upward import are found."""
  assert find_cycle({"a": [(1, "b")], "b": [(3, "c")], "c": [(5, "a")]}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": [(1, "b")], "b": []}) is None
  layers = [["launch/"], ["jaxslm/train/"], ["jaxslm/models/", "jaxslm/ops.py"]]
  assert layer_of("jaxslm.train.grpo", layers) == 1
  assert layer_of("jaxslm.ops", layers) == 2
  assert layer_of("jaxslm.models.decoder", layers) == 2
  assert layer_of("jaxslm.sampling", layers) is None
