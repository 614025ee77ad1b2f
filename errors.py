"""Every error the project raises on purpose, in one place.

Each is shown to a person as one line (main.py, inference/cli.py) and never as a traceback: the
message names the file or field and what is wrong with it. The modules that raised them first
still import them under the old names (input_pipeline.image_io.DataError, ...). This module
imports nothing of the project, so every layer may use it.
"""


class ConfigError(ValueError):
  """A config value that cannot work (configs/validate.py): the message names the field."""


class DataError(ValueError):
  """A user-data problem (missing dataset, empty folder, a single class): one line."""


class LabelsChanged(DataError):
  """A resume whose training data would map labels to other classes than the checkpoint was
  trained with (a type folder added or removed, another template set): refused, not relabelled."""


class InputError(ValueError):
  """Bad user input to the inference tools (file, folder, label, registry, option): one line."""


class CorruptFileError(InputError):
  """A file the project wrote (registry, config.json, export, checkpoint) cannot be read back:
  truncated, garbled or hand-edited. The message names the file and what is wrong."""


class RegistryBusy(InputError):
  """Another process holds the registry's write lock for longer than we wait: retry."""


class RunStopped(RuntimeError):
  """The training run cannot go on (non-finite loss, checkpoint that does not fit, disk full,
  nothing to learn); said in one line, the last good checkpoint left intact."""


class WorkdirLocked(RunStopped):
  """Another trainer (host and pid in the message) is running in this workdir."""
