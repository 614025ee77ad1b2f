"""'configs/x.py:arg' -> x.get_config('arg'), as main.py's --config flag resolves it (for scripts
that take a config without absl flags)."""
import importlib.util
import os

from errors import ConfigError


def load_config(spec):
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('config_module', path)
  if module_spec is None or not os.path.isfile(path):
    raise ConfigError(f'--config={spec}: no such config file')
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)
