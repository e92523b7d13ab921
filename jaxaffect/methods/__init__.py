"""Method registry: `config.method` names a module `jaxaffect.methods.<name>` exporting `Method`,
a class registered with `register`, or "module:Class" (plug-ins and tests)."""
import importlib
import pkgutil

from jaxaffect.errors import UserError

_REGISTERED = {}


def known() -> tuple[str, ...]:
  """Method names: the method modules of this package (each exports `Method`), then the
  registered ones."""
  names = [m.name for m in pkgutil.iter_modules(__path__)
           if m.name not in ("base",) and not m.name.endswith("_loss")]
  return tuple(sorted(names)) + tuple(_REGISTERED)


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
      raise UserError(f"config.method: unknown method {name!r}; known: "
                      f"{', '.join(known())}") from e
    raise
  return module.Method(config)
