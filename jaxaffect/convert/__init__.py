"""PyTorch checkpoint converters for the original models (torch is NOT needed at runtime).

  python -m jaxaffect.convert hara3d [--depth 101] [--conv1-t-size K] IN.pth OUT_DIR
      Hara et al.'s 3D ResNets, both generations: resnet-{10..200}-kinetics.pth (2018: dict with
      'state_dict', keys prefixed 'module.', no num_batches_tracked) and r3d{18..200}_*_200ep.pth
      (2020: no prefix; conv1's temporal size read from the weights). Writes the
      visual_backbone subtree (params + BatchNorm running stats); the fc head is dropped.
  python -m jaxaffect.convert torchvision-resnet18 IN.pth OUT_DIR   (or torchvision-resnet --depth)
      torchvision ImageNet ResNet -> VAANet's audio_backbone; the ImageNet conv1 and fc are
      dropped, the model's 1-channel (7, 1) audio stem keeps its init.
  python -m jaxaffect.convert {vaanet, tsl, bpmgcn} ...
      The papers' own checkpoints: each method package's converters.py adds its subcommand
      (see `python -m jaxaffect.convert --help`).
  python -m jaxaffect.convert inspect IN.pth
      Lists the tensors (key, shape, dtype).

Every checkpoint key is either converted or dropped for a stated reason, and every model variable
comes from a key (or is listed as keeping its init): anything else is an error naming the keys
(and both shapes on a mismatch). The output is a params checkpoint
{"params": ..., "batch_stats": ...} plus jaxaffect_convert.json (what it covers); train or
evaluate from it with --config.init_from=OUT_DIR. Reading .pth files uses a restricted unpickler
(`torch_pickle`) for both the zip (torch >= 1.6) and the legacy (torch <= 1.5) formats.
"""
from jaxaffect.convert.converters import Converted, hara3d, torchvision_resnet
from jaxaffect.convert.keymap import ConversionError
from jaxaffect.converted_checkpoint import (is_converted, read_meta, restore_converted,
                                            save_converted)
from jaxaffect.convert.torch_pickle import TorchFileError, load as load_pth

__all__ = ["Converted", "ConversionError", "TorchFileError", "hara3d", "is_converted",
           "load_pth", "read_meta", "restore_converted", "save_converted", "torchvision_resnet"]
