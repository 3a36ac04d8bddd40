"""Errors caused by the user's input. Entry points print them as one line, without a traceback."""


class UserError(Exception):
  """A mistake in a config, a flag or an input file; the message names it."""


class ConfigError(UserError):
  def __init__(self, key: str, value, problem: str):
    super().__init__(f'config.{key}={value!r}: {problem}')
    self.key, self.value, self.problem = key, value, problem  # For CLIs that name their flags.
