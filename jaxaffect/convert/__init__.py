"""PyTorch checkpoint converters for the original models (torch is NOT needed at runtime).

Commands, what each converter reads and writes, and the key accounting in
jaxaffect_convert.json: README.md, section "VAANet at paper fidelity" (pretrained weights);
`python -m jaxaffect.convert --help`. The shared backbone converters are in converters.py, each
paper's in methods/<paper>/converters.py (found through method.plugin_modules). .pth files are
read by a restricted unpickler (`torch_pickle`), zip (torch >= 1.6) and legacy (<= 1.5) formats.
"""
from jaxaffect.convert.converters import Converted, hara3d, torchvision_resnet
from jaxaffect.convert.keymap import ConversionError
from jaxaffect.converted_checkpoint import (is_converted, read_meta, restore_converted,
                                            save_converted)
from jaxaffect.convert.torch_pickle import TorchFileError, load as load_pth

__all__ = ["Converted", "ConversionError", "TorchFileError", "hara3d", "is_converted",
           "load_pth", "read_meta", "restore_converted", "save_converted", "torchvision_resnet"]
