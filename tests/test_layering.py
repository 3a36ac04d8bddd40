"""The layers: vit/ is a library that imports no objective, its modules form no cycle, and no
objective imports another (what two objectives share belongs in vit/).

Read from the source (every import statement, those inside functions too), so the test needs
nothing imported and fails on the line that breaks the rule, not on a later import error.
"""
import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Packages that implement objectives (vit/objective.py) or use the library from outside.
ABOVE_THE_LIBRARY = ('mpp', 'supervised', 'mae', 'simmim', 'study', 'benchmarks', 'configs',
                     'tests')
# The packages that define an objective: those with an `objective.py` (vit/objective.py is the
# interface they implement), found rather than listed so that a new objective is covered too.
OBJECTIVES = tuple(sorted(
    name for name in os.listdir(ROOT) if name != 'vit'
    and os.path.isfile(os.path.join(ROOT, name, 'objective.py'))))


def _modules(package: str) -> dict[str, str]:
  out = {}
  for folder, _, files in os.walk(os.path.join(ROOT, package)):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(folder, name)
        module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
        out[module.removesuffix('.__init__')] = path
  return out


def _imports(path: str) -> list[tuple[int, str]]:
  """(line, module) of every import in the file; `from a import b` counts a and a.b."""
  out = []
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      out += [(node.lineno, a.name) for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      assert node.level == 0, f'{path}:{node.lineno}: relative import'
      out.append((node.lineno, node.module))
      out += [(node.lineno, f'{node.module}.{a.name}') for a in node.names]
  return out


def test_the_library_imports_no_objective():
  wrong = [f'{os.path.relpath(path, ROOT)}:{line} imports {name}'
           for path in _modules('vit').values() for line, name in _imports(path)
           if name.split('.')[0] in ABOVE_THE_LIBRARY]
  assert not wrong, wrong


def test_no_objective_imports_another():
  assert {'mpp', 'supervised', 'mae', 'simmim'} <= set(OBJECTIVES), OBJECTIVES
  wrong = [f'{os.path.relpath(path, ROOT)}:{line} imports {name}'
           for package in OBJECTIVES for path in _modules(package).values()
           for line, name in _imports(path)
           if name.split('.')[0] in set(OBJECTIVES) - {package}]
  assert not wrong, wrong


def test_no_import_cycle_in_the_library():
  modules = _modules('vit')
  graph = {m: {name for _, name in _imports(p) if name in modules and name != m}
           for m, p in modules.items()}
  # Depth-first search; a back edge closes a cycle, reported as the path around it.
  state, path, cycles = {}, [], []

  def visit(m):
    state[m] = 'open'
    path.append(m)
    for n in sorted(graph[m]):
      if state.get(n) == 'open':
        cycles.append(path[path.index(n):] + [n])
      elif n not in state:
        visit(n)
    path.pop()
    state[m] = 'done'

  for m in sorted(graph):
    if m not in state:
      visit(m)
  assert not cycles, [' -> '.join(c) for c in cycles]


def test_bazel_targets_agree():
  """vit's targets depend on no objective, an objective's on no other; each package's BUILD
  names what it imports.

  Only `deps` count: a config file read by path at run time is `data`, not an import.
  """
  def deps(package):
    text = open(os.path.join(ROOT, package, 'BUILD')).read()
    lists = re.findall(r'\bdeps\s*=\s*\[(.*?)\]', text, re.S)
    return {d for block in lists for d in re.findall(r'"//(\w+)', block)} | {package}

  assert not deps('vit') & set(ABOVE_THE_LIBRARY)
  for package in OBJECTIVES:
    # The library target only: a command may load another objective's checkpoints by name at
    # run time (supervised.finetune --config.init=mpp:DIR) without importing its package.
    text = open(os.path.join(ROOT, package, 'BUILD')).read()
    library = re.search(r'py_library\((.*?)\n\)', text, re.S).group(1)
    others = set(re.findall(r'"//(\w+)', library)) & set(OBJECTIVES) - {package}
    assert not others, f'{package}/BUILD: py_library depends on //{", //".join(sorted(others))}'
  ours = {'vit', *ABOVE_THE_LIBRARY} - {'tests'}
  for package in sorted(ours - {'vit', 'configs'}):
    imported = {name.split('.')[0] for path in _modules(package).values()
                for _, name in _imports(path)}
    missing = imported & ours - deps(package)
    assert not missing, f'{package}/BUILD lacks //{", //".join(sorted(missing))}'


def _pretraining_specs() -> set[str]:
  """The keys of vit/init_spec.py's PRETRAINING: the init specs (`mpp:DIR`, ...) that name an
  objective's package, read from the source."""
  tree = ast.parse(open(os.path.join(ROOT, 'vit', 'init_spec.py')).read())
  for node in tree.body:
    if isinstance(node, ast.Assign) and [getattr(t, 'id', None) for t in node.targets] == [
        'PRETRAINING']:
      return {k.value for k in node.value.keys}
  raise AssertionError('vit/init_spec.py defines no PRETRAINING')


def test_the_commands_that_read_pretraining_checkpoints_depend_on_their_packages():
  """supervised's commands (finetune, predict) start from any pretraining checkpoint: their
  Bazel target depends on every package an init spec names (its saved config carries that
  objective's section)."""
  specs = _pretraining_specs()
  assert {'mpp', 'mae', 'simmim'} <= specs <= set(OBJECTIVES)
  text = open(os.path.join(ROOT, 'supervised', 'BUILD')).read()
  clis = re.search(r'py_clis\((.*?)\n\)', text, re.S).group(1)
  deps = set(re.findall(r'"//(\w+)', re.search(r'\bdeps\s*=\s*\[(.*?)\]', clis, re.S).group(1)))
  assert specs <= deps, f'supervised/BUILD py_clis lacks //{", //".join(sorted(specs - deps))}'
