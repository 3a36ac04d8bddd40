"""What every entry point shares: the --config/--workdir flags, one-line user errors, a leading
`~` in a flag's path read as the home directory, and the console that shows the library's log
messages."""
from __future__ import annotations

import importlib.util
import logging as std_logging
import os
import reprlib
import signal
import sys
import traceback
import warnings
from typing import Callable, Optional

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags
# config_flags' placeholder for a file that did not load is private to this module (pinned).
from ml_collections.config_flags import config_flags as _config_flags_module

import vit
from vit import config as config_lib, distributed, host_memory, user_paths, xla_flags
from vit.errors import UserError
from vit.objective import Definition


_CONFIG_HOLDERS = []
# The packages whose modules log through `logging.getLogger(__name__)`: their records are the
# messages a user reads, shown as plain lines (others, jax's and orbax's, keep absl's format).
# An entry point run as `python -m vit.export` logs as '__main__'.
PACKAGES = ('vit', 'mpp', 'supervised', 'mae', 'simmim', '__main__')


class _ConsoleFormatter(std_logging.Formatter):
  def format(self, record: std_logging.LogRecord) -> str:
    message = record.getMessage()
    if record.levelno >= std_logging.WARNING:
      return f'{record.levelname.lower()}: {message}'
    return message


class _Console(std_logging.Handler):
  """INFO lines on stdout as they are, warnings and errors on stderr after 'warning: ' or
  'error: ', flushed at once (a log read while the run goes on, a test reading a subprocess's
  lines). The stream is looked up at each record, so a redirected or captured sys.stdout
  (contextlib.redirect_stdout, pytest's capsys) receives what print() would have written."""

  def emit(self, record: std_logging.LogRecord) -> None:
    try:
      stream = sys.stdout if record.levelno < std_logging.WARNING else sys.stderr
      stream.write(self.format(record) + '\n')
      stream.flush()
    except Exception:  # logging's contract: a handler reports its failure, never raises.
      self.handleError(record)


def _not_ours(record: std_logging.LogRecord) -> bool:
  return record.name.split('.')[0] not in PACKAGES


def log_to_console() -> None:
  """Shows the INFO and higher records of PACKAGES' loggers on the console (_Console); once per
  process, however often called. Records still reach the root logger's handlers (a test's
  caplog) but not absl's, which app.run puts there and would print them a second time."""
  console = _Console()
  console.setFormatter(_ConsoleFormatter())
  for name in PACKAGES:
    logger = std_logging.getLogger(name)
    if not any(isinstance(h, _Console) for h in logger.handlers):
      logger.addHandler(console)
    logger.setLevel(std_logging.INFO)
  absl_handler = logging.get_absl_handler()
  if _not_ours not in absl_handler.filters:
    absl_handler.addFilter(_not_ours)


_RETURNED_NONE = 'get_config() returned None'


def _said_here(record: std_logging.LogRecord) -> bool:
  return _RETURNED_NONE not in record.getMessage()


def define_config_flags(default_config: str | None = None, workdir: bool = True,
                        objective: Definition | None = None, reads_init: bool = False):
  """--config (an ml_collections config file, overridable by --config.a.b=value) and, unless
  `workdir` is False (a command that writes no run), the required --workdir; returns their
  holders, (config, workdir or None). A config file that cannot be loaded, an unknown override
  key or a missing --config is one line at parsing (`_parse_flags`). A trainer passes its
  `objective` (its package's DEFINITION): a config written for another objective is then
  refused in one line at flag parsing, before anything is written
  (`vit.config.check_objective`), and so is a config.init unless the trainer `reads_init`
  (supervised.finetune; `vit.config.check_no_init`). A trainer's --help lists, beside these,
  the multi-process flags of `vit.distributed`."""
  # config_flags' warning of a get_config() returning None: `_config_file` says it.
  std_logging.getLogger('absl').addFilter(_said_here)
  try:
    # config_flags reads the file from sys.argv (here and again at parsing), so the `~` that
    # bash leaves in --config=~/FILE is expanded there.
    sys.argv[:] = home_expanded_config(sys.argv)
  except UserError as e:
    _fail_one_line(str(e))
  try:
    # config_flags reads sys.argv here to type each --config.x override, so an unknown key
    # or a config file that does not load surfaces at definition time.
    config = config_flags.DEFINE_config_file(
        'config', default_config, ('Path' if default_config else 'Required: path')
        + ' to an ml_collections config file; override any field with --config.a.b=value.',
        lock_config=True)
    if default_config is None:  # config_flags writes "(default: 'None')" into --help.
      flags.FLAGS['config'].default_as_str = None
  except Exception as e:  # noqa: BLE001 (the config file's own code may raise anything)
    _fail_config(e, default_config)
  _CONFIG_HOLDERS.append((config, default_config, objective, reads_init))
  names = ['config']
  workdir_holder = None
  if workdir:
    workdir_holder = flags.DEFINE_string(
        'workdir', None, 'Directory for checkpoints, TensorBoard events and the batch '
        'contract; rerunning resumes from it.', required=True)
    names.append('workdir')
  if objective is not None:
    # A trainer's multi-process flags (vit.distributed), which the scaling-out and
    # fault-tolerance guides tell its user to pass: --help showed only --config and --workdir.
    names += distributed.FLAG_NAMES
  # --help lists the main module's key flags only; these are defined elsewhere.
  for name in names:
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])
  return config, workdir_holder


def home_expanded_config(argv: list[str]) -> list[str]:
  """`argv` with a leading `~` expanded in each `--config=~/FILE` and `--config ~/FILE` (as
  absl reads both; bash leaves the `~` after `=` or in quotes) (vit.user_paths). UserError
  naming --config for a `~user` that names no user."""
  out = []
  for i, a in enumerate(argv):
    for prefix in ('--config=', '-config='):
      if a.startswith(prefix + '~'):
        a = prefix + user_paths.expand(a[len(prefix):], '--config')
    if i and argv[i - 1] in ('--config', '-config') and a.startswith('~'):
      a = user_paths.expand(a, '--config')
    out.append(a)
  return out


def expand_home(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """A leading `~` in the value of every string flag expanded to the home directory
  (vit.user_paths): bash leaves it in `--workdir=~/runs/x`, and a command would create a folder
  named `~` in the current directory. Leading slashes become one (`--workdir=//tmp/x`: orbax's
  tensorstore refuses the path Linux reads as /tmp/x). No flag of these commands takes a value
  that starts with `~` or `//` for another reason. The --config.a.b overrides are left to the
  readers of their keys (`config.init`: vit.init_spec; `config.data.*`: vit.data.pipeline).
  UserError naming the flag for a `~user` that names no user."""
  for name in list(flag_values):
    flag = flag_values[name]
    if '.' not in name and isinstance(flag.value, str) and flag.value.startswith(('~', '//')):
      flag.value = user_paths.expand(flag.value, f'--{flag.name}')


def run(main: Callable[[list[str]], None], positional: bool = False,
        interrupted: Optional[str] = None) -> None:
  """absl's app.run, with UserError printed as one line (no traceback) and exit status 2.

  A command that takes only flags (`positional` False: every command but vit.inspect.runs)
  refuses a word after them (`refuse_arguments`) before `main` runs. `interrupted` is the line
  a Ctrl-C that reaches here prints, for a command whose loss is neither of
  `_interrupted_line`'s two (study.snapshot: it has --workdir but trains nothing)."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  xla_flags.apply_defaults()  # Before anything starts a backend: XLA reads them once.
  host_memory.release_after_compiles()
  # A persistent compilation cache: a resumed run, `make demo` again or the next fine-tuning
  # reuse compiled steps (31.8 s -> 5.1 s in docs/performance.md). JAX_COMPILATION_CACHE_DIR
  # chooses another place; an empty value turns it off.
  cache = os.environ.get('JAX_COMPILATION_CACHE_DIR',
                         os.path.join(os.path.expanduser('~'), '.cache', 'vit_jax', 'xla'))
  if cache:
    jax.config.update('jax_compilation_cache_dir', cache)
    tell_cache_write_failures_once(cache)

  def wrapped(argv):
    logging.set_verbosity(logging.WARNING)  # absl's records (jax, orbax): warnings and up.
    log_to_console()
    try:
      if vit.interrupted:  # A Ctrl-C while importing that Python dropped (vit/__init__.py).
        print('interrupted while starting: nothing was written', file=sys.stderr)
        sys.exit(130)
      if not positional:  # Before a multi-host start waits for the other processes.
        refuse_arguments(argv)
      _end_the_imports_sigterm_line()
      distributed.initialize()  # Before any backend use: multi-host jobs, CPU without libtpu.
      _stop_on_sigterm_while_starting()
      distributed.watch_processes(_workdir())  # A lost process: one line, not a hang.
      main(argv)
      distributed.finished()
    except UserError as e:
      print(f'error: {e}', file=sys.stderr)
      _quiet_shutdown()
      sys.exit(2)
    except Terminated:
      print(_terminated_line(), file=sys.stderr)
      sys.exit(143)  # 128 + SIGTERM: what the shell reported when the signal ended it silently.
    except KeyboardInterrupt:
      # Before the loop installs its handler, or a second signal: the user insists on stopping.
      print(interrupted or _interrupted_line(), file=sys.stderr)
      sys.exit(130)
    except FloatingPointError as e:
      print(f'error: {e}; the state of that step was not saved', file=sys.stderr)
      sys.exit(3)
    except Exception as e:
      memory = out_of_memory(e)
      if memory:
        print(f'error: {memory}', file=sys.stderr)
        _quiet_shutdown()
        sys.exit(2)
      line = distributed.lost_process(e, _workdir())
      if line is None:
        raise
      distributed.exit_now(line)

  app.run(wrapped, flags_parser=_parse_flags)


def refuse_arguments(argv: list[str]) -> None:
  """UserError naming the first word after the flags (argv[1:], which absl hands to main) of
  a command that takes only flags: they were ignored without a word (`--images a.npy b.npy`
  read a.npy alone, `--max_images 16 32` used 16)."""
  if len(argv) > 1:
    # `--config.fewshot.enabled False` set it True (a bare boolean flag) and left 'False' here.
    boolean = (f'; a boolean flag is --name={argv[1]}, not --name {argv[1]}'
               if argv[1].lower() in ('true', 'false') else '')
    raise UserError(f'unexpected argument {argv[1]!r}: this command takes only flags '
                    f'(--name=value; --help lists them){boolean}')


_CACHE_WRITE = 'Error writing persistent compilation cache entry'


def out_of_memory(e: BaseException) -> str | None:
  """The line for XLA's failure to allocate (RESOURCE_EXHAUSTED, raised by any step or forward
  pass that does not fit: a batch, a resolution), with the sizes that set the memory; None
  for any other error. Saved checkpoints are untouched: nothing is written on the way out."""
  text = str(e)
  if type(e).__name__ not in ('JaxRuntimeError', 'XlaRuntimeError') or (
      'RESOURCE_EXHAUSTED' not in text):
    return None
  first = text.strip().splitlines()[0] if text.strip() else 'RESOURCE_EXHAUSTED'
  return (f'out of memory on the {jax.default_backend().upper()} ({first}); lower '
          f'{_memory_knobs(flags.FLAGS)} or the model')


def _memory_knobs(flag_values: flags.FlagValues) -> str:
  """The settings of this command that size its memory: a trainer's config keys, or the
  standalone tools' own flags (--batch_size, --resolution, --image_size), whichever it has."""
  if 'config' in flag_values:
    return 'config.batch_size, config.eval_batch_size, config.image_size'
  own = [f'--{name}' for name in ('batch_size', 'resolution', 'image_size')
         if name in flag_values]
  return ', '.join(own) or 'the batch, the image size'


def tell_cache_write_failures_once(cache: str) -> None:
  """jax warns in two lines at every compile whose step it cannot keep in the persistent
  compilation cache (a full disk, a read-only home); a full disk's own error line then comes
  after them. Told instead in one line, once, naming the folder and the way out; other
  warnings are shown as before."""
  previous, told = warnings.showwarning, []

  def show(message, category, filename, lineno, file=None, line=None):
    text = str(message)
    if not text.startswith(_CACHE_WRITE):
      previous(message, category, filename, lineno, file, line)
    elif not told:
      told.append(text)
      reason = text.split("': ", 1)[-1]
      print(f'warning: compiled steps are not kept in the compilation cache {cache} ({reason}); '
            'JAX_COMPILATION_CACHE_DIR= (empty) turns it off', file=sys.stderr)

  warnings.showwarning = show


def _workdir():
  """--workdir of the entry point that has one (the trainers), else None."""
  return flags.FLAGS['workdir'].value if 'workdir' in flags.FLAGS else None


class Terminated(KeyboardInterrupt):
  """SIGTERM (a scheduler's stop, `kill`) while a trainer starts, before its loop takes the
  signal over (`vit.checkpoints.StopSignal`): taken as Ctrl-C is, so that `run` says it in one
  line. Python's default ended the process at once, exit status 143 and not a word."""


def _terminate(signum, frame):
  del signum, frame
  raise Terminated


# For the start-up only: the loop's StopSignal does not give the signal back to this handler
# after the loop, nor for a second signal (the default then ends the process at once, even one
# stuck in native code).
_terminate.vit_start_up = True


def _end_the_imports_sigterm_line() -> None:
  """SIGTERM back to its default action where vit/__init__.py took it for the imports ('stopped
  while starting (SIGTERM): nothing was written'): before the command writes anything, and
  before jax.distributed starts, whose preemption notifier takes SIGTERM in a job of several
  processes (a Python handler set after it would replace it; one set before is replaced)."""
  if getattr(signal.getsignal(signal.SIGTERM), 'vit_while_importing', False):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def raise_on_sigterm() -> bool:
  """SIGTERM raises `Terminated` from here on, for a command that catches it to say in one
  line what state it leaves its output in (vit.export), as Ctrl-C's KeyboardInterrupt; True
  when so. Not where SIGTERM is ignored (the parent's choice) nor in a job of several
  processes (JAX's preemption service has it)."""
  if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
    return False
  if jax.distributed.is_initialized() and jax.process_count() > 1:
    return False
  signal.signal(signal.SIGTERM, _terminate)
  return True


def _stop_on_sigterm_while_starting() -> None:
  """A trainer's SIGTERM (its `define_config_flags` names its objective) raises `Terminated`
  until its loop begins: the data set-up, the evaluators' splits and the restore take seconds
  to minutes. Not in another command (the study's, which runs trainers in its workers, says
  nothing of a run's steps), nor where `raise_on_sigterm` leaves SIGTERM alone: ignored by the
  parent, or a job of several processes, where it is left to JAX's preemption service as in
  the loop."""
  if any(objective is not None for _, _, objective, _ in _CONFIG_HOLDERS):
    raise_on_sigterm()


def _terminated_line() -> str:
  """What a SIGTERM of a trainer's start-up says: no step was trained, so nothing was saved;
  the run's newest saved step, when it has one, is as it was and the same command resumes."""
  from vit import checkpoints  # orbax, imported on this path only
  workdir = _workdir()
  steps = checkpoints.steps_on_disk(workdir)
  said = 'stopped while starting (SIGTERM): no step was trained, nothing was saved'
  if not steps:
    return f'{said}; rerun the same command to start the run'
  newest = os.path.join(workdir, 'checkpoints', str(steps[-1]))
  return f'{said}; its newest step, {newest}, is unchanged; rerun the same command to resume'


def _interrupted_line() -> str:
  """What a Ctrl-C that reached `run` says: a command with --workdir lost its steps since the
  last checkpoint. That flag, not the `objective` given to `define_config_flags` (what makes a
  command a trainer for `_stop_on_sigterm_while_starting`), chooses the line: every trainer has
  it, and so does study.run, which trains its runs in its own process (study.snapshot has it
  too and gives `run` its own line). Any other command (vit.inspect, vit.plan, ...) has no
  steps nor checkpoints, and its line said it had."""
  if 'workdir' in flags.FLAGS:
    return 'interrupted: steps since the last checkpoint were not saved'
  return 'interrupted'


def _quiet_shutdown() -> None:
  """After the one error line, nothing more: a background save stopped half-way (orbax's
  asyncio tasks) can leave coroutines that were never awaited, which Python reports at exit
  as two RuntimeWarning lines (seen under load on a full disk, tests/test_full_disk.py)."""
  warnings.filterwarnings('ignore', category=RuntimeWarning)


def help_spelled_h(argv: list[str]) -> list[str]:
  """`argv` with each `-h` before a `--` read as --help: the benchmarks (argparse) and most
  tools take it, absl knows only --help, -?, --helpshort and --helpfull and answered
  "error: Unknown command line flag 'h'" with exit status 2."""
  out = list(argv)
  for i, a in enumerate(out[1:], 1):
    if a == '--':
      break
    if a == '-h':
      out[i] = '--help'
  return out


def _parse_flags(argv: list[str]) -> list[str]:
  """Flag parsing that reports a bad --config file or override key, or a missing --config, in
  one line, and expands a leading `~` in the flags' values (`expand_home`). `-h` asks for the
  help, as --help does (`help_spelled_h`)."""
  argv = help_spelled_h(argv)
  try:
    asked_help = any(a.split('=')[0] in ('--help', '-help', '-?', '--helpshort', '--helpfull')
                     for a in argv)
    try:
      argv = flags.FLAGS(argv)
    except SystemExit:
      # absl exits 1 after printing --help; asking for help is not a failure.
      if asked_help:
        sys.exit(0)
      raise
    except BrokenPipeError:
      if not asked_help:
        raise
      # `--help | head`: the reader had what it wanted. It was 'error: [Errno 32] Broken pipe'
      # and 'Pass --help to see the flags.', exit status 2. Python flushes stdout again at exit.
      os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
      sys.exit(0)
    for holder, default, _, _ in _CONFIG_HOLDERS:
      if holder.value is None and _config_path(default) is None:
        _fail('--config is required: a config file, e.g. configs/supervised/fashion_mnist.py')
      if holder.value is None:
        raise ValueError(_RETURNED_NONE)
      if isinstance(holder.value, _config_flags_module._ErrorConfig):
        holder.value.to_dict()  # A file that did not load: its error, for _fail_config to name.
      problem = _not_a_config_dict(holder.value, _config_source(default))
      if problem:  # Named as get_config() returned it, before config_flags' overrides.
        _fail_one_line(_returned(default) or problem)
      holder.value.to_dict()  # config_flags loads the file and applies overrides lazily.
  except Exception as e:  # noqa: BLE001 (the config file's own code may raise anything)
    _fail_config(e, _CONFIG_HOLDERS[0][1] if _CONFIG_HOLDERS else None)
  try:
    expand_home()
  except UserError as e:
    _fail_one_line(str(e))
  _check_objectives()
  return argv


def _check_objectives() -> None:
  """Exits with status 2 after one line when --config lacks keys of vit.config.defaults(), is
  for another objective than the trainer's (the `objective` of define_config_flags), or sets
  config.init for a trainer that does not read it (not `reads_init`)."""
  for holder, default_config, objective, reads_init in _CONFIG_HOLDERS:
    if objective is None:
      continue
    try:
      config_lib.check_core_keys(holder.value, source=_config_source(default_config))
      config_lib.check_objective(holder.value, objective, source=_config_source(default_config),
                                 trainer=_program(), example=default_config)
      if not reads_init:
        config_lib.check_no_init(holder.value, trainer=_program())
    except UserError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)


def _program() -> str:
  """The running command as a user typed it: 'mpp.train' for `python -m mpp.train`."""
  spec = getattr(sys.modules['__main__'], '__spec__', None)
  return spec.name if spec else os.path.basename(sys.argv[0])


def _fail_config(e: Exception, default_config: str | None) -> None:
  """Exits with status 2 after one line for a config file that does not load (`_config_file`),
  a bad flag or an unknown --config.* key (`_fail_override`); raises anything else."""
  problem = _config_file(e, _config_path(default_config)) or _returned(default_config)
  if problem is not None:
    _fail_one_line(problem)
  if isinstance(e, flags.Error):
    _fail(str(e))
  if isinstance(e, (AttributeError, KeyError, OSError, ValueError, TypeError)):
    # config_flags raises these for an unknown override key.
    _fail_override(e, default_config)
  raise e


def _config_source(default_config: str | None) -> str | None:
  """The --config argument as given on the command line (the last one), else the default."""
  args = sys.argv[1:]
  given = [a.split('=', 1)[1] for a in args if a.startswith('--config=')]
  given += [b for a, b in zip(args, args[1:]) if a == '--config']
  return given[-1] if given else default_config


def _config_path(default_config: str | None) -> str | None:
  """The config file of `_config_source` (a `:ARG` for get_config cut off)."""
  source = _config_source(default_config)
  return source.split(':', 1)[0] if source else None


def _config_file(e: BaseException, path: str | None) -> str | None:
  """'--config FILE[:LINE]: problem' when `e` comes from loading the config file FILE: missing,
  a directory, a syntax error, no get_config(), get_config() returning None, or an exception
  its own code raised (named with the line of FILE it came from); None for other errors."""
  if not path:
    return None
  chain = list(_chain(e))
  if not os.path.isfile(path) and any(isinstance(x, OSError) for x in chain):
    if os.path.isdir(path):
      return f'--config {path}: a directory, not a config file'
    where = '' if os.path.isabs(path) else f' (relative to {os.getcwd()})'
    return f'--config {path}: no such file{where}'
  target = os.path.abspath(path)
  for error in chain:
    if isinstance(error, SyntaxError) and error.filename and os.path.abspath(
        error.filename) == target:
      return f'--config {path}:{error.lineno}: {type(error).__name__}: {error.msg}'
    if isinstance(error, AttributeError) and "has no attribute 'get_config'" in str(error):
      return (f'--config {path}: defines no get_config() (a config file returns its '
              f'ConfigDict from get_config())')
    if any(text in str(error) for text in (_RETURNED_NONE, 'Unexpected None value for flag')):
      return f'--config {path}: get_config() returned None (a missing return?)'
    lines = [t.lineno for t in traceback.extract_tb(error.__traceback__)
             if os.path.abspath(t.filename) == target]
    if lines:
      return f'--config {path}:{lines[-1]}: {type(error).__name__}: {" ".join(str(error).split())}'
    if isinstance(error, TypeError) and str(error).startswith('get_config() '):
      # Raised by the call itself (no line of FILE): config_flags passes what follows the
      # first ':' of --config FILE:ARG to get_config, which may take no argument or need one.
      _, sep, argument = (_config_source(path) or '').partition(':')
      if sep and 'takes 0 positional arguments' in str(error):
        return (f'--config {path}: its get_config() takes no argument (got {argument!r} from '
                f'--config {path}:{argument})')
      return (f'--config {path}: {" ".join(str(error).split())} (config_flags passes it the ARG '
              f'of --config FILE:ARG)')
  return None


def _returned(default_config: str | None) -> str | None:
  """`_not_a_config_dict` of what the config file's get_config() returns, loaded again: an
  error of config_flags (applying an override to a dict, locking a FrozenConfigDict) does not
  say that get_config() returned no ConfigDict. None when it did, or when it does not load."""
  source = _config_source(default_config)
  if not source:
    return None
  path, sep, argument = source.partition(':')  # As config_flags: FILE[:ARG for get_config].
  try:
    spec = importlib.util.spec_from_file_location('vit_cli_config_check', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    value = module.get_config(*([argument] if sep else []))
  except Exception:  # noqa: BLE001 (the file's own errors are `_config_file`'s to name)
    return None
  return _not_a_config_dict(value, source)


def _not_a_config_dict(value, source: str | None) -> str | None:
  """'--config FILE: get_config() returned a dict ..., not an ml_collections.ConfigDict' when
  `value`, what get_config() returned, is not a mutable ConfigDict (the entry points lock it,
  override its keys and fill them in); None when it is one."""
  if isinstance(value, ml_collections.ConfigDict) and not isinstance(
      value, ml_collections.FrozenConfigDict):
    return None
  if value is None:
    return f'--config {source}: get_config() returned None (a missing return?)'
  if isinstance(value, ml_collections.FrozenConfigDict):
    return (f'--config {source}: get_config() returned a FrozenConfigDict, which no override '
            'can change; return an ml_collections.ConfigDict')
  brief = reprlib.Repr()  # One line, whatever get_config() returned.
  brief.maxlevel, brief.maxdict, brief.maxlist, brief.maxstring, brief.maxother = 2, 3, 3, 30, 30
  shown = ' '.join(brief.repr(value).split())
  return (f'--config {source}: get_config() returned {type(value).__name__} {shown}, not an '
          'ml_collections.ConfigDict (return ml_collections.ConfigDict(...), as the files '
          'under configs/ do)')


def _chain(e: BaseException | None):
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    yield e
    e = e.__cause__ or e.__context__


def _fail_override(e: Exception, default_config: str | None) -> None:
  """Exits with status 2 after one line naming an unknown --config.* key and the config file,
  or the error's own line with the usual hint."""
  unknown = _unknown_override(e, default_config)
  if unknown is None:
    _fail(_one_line(e))
  print(f'error: {unknown}', file=sys.stderr)
  sys.exit(2)


def _unknown_override(e: Exception, default_config: str | None) -> str | None:
  """'--config.a.b: unknown config key; FILE has no config.a.b' for the override that
  config_flags could not apply (it raises only the missing key, KeyError('b'), with its
  suggestion if any); None when no --config.* argument names that key."""
  if not isinstance(e, (AttributeError, KeyError)):
    return None
  key, _, hint = _one_line(e).partition(' ')
  args = sys.argv[1:]
  paths = [a[2:].split('=', 1)[0] for a in args if a.startswith('--config.')]
  named = [p for p in paths if key in p.split('.')[1:]]
  if not named:
    return None
  source = _config_source(default_config)
  return (f'--{named[0]}: unknown config key; {source} has no {named[0]}'
          + (f' ({hint})' if hint else ''))


def _one_line(e: Exception) -> str:
  while e.args and isinstance(e.args[0], Exception):  # AttributeError(KeyError(...))
    e = e.args[0]
  text = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
  return ' '.join(part.strip(' \'"') for part in text.splitlines() if part.strip())


def _fail_one_line(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  print('Pass --help to see the flags.', file=sys.stderr)
  sys.exit(2)
