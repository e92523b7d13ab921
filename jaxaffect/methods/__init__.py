"""Method registry: `config.method` names a module `jaxaffect.methods.<name>` exporting `Method`,
a class registered with `register`, or "module:Class" (plug-ins and tests)."""
import importlib

KNOWN = ("vaanet", "bpmgcn")
_REGISTERED = {}


def register(name: str, cls) -> None:
  _REGISTERED[name] = cls


def get_method(config):
  name = config.method
  if name in _REGISTERED:
    return _REGISTERED[name](config)
  if ":" in name:  # "some.module:ClassName" for methods that live outside the package
    module_name, _, cls = name.partition(":")
    return getattr(importlib.import_module(module_name), cls)(config)
  try:
    module = importlib.import_module(f"jaxaffect.methods.{name}")
  except ModuleNotFoundError as e:
    if e.name == f"jaxaffect.methods.{name}":
      from jaxaffect.errors import UserError
      raise UserError(f"config.method: unknown method {name!r}; known: "
                      f"{', '.join(KNOWN + tuple(_REGISTERED))}") from e
    raise
  return module.Method(config)
