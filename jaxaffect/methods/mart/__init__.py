"""MART (CVPR 2024): masked affective representation learning over video, audio and subtitles.

model.py (the MBT audio-visual backbone), pretrain_model.py (stage 1: BERT, TACL, mask token,
decoder), method.py (both stages, losses), encoders/decoder/tacl/masking/losses (the parts),
hf_convert.py and converters.py (checkpoints), data.py (the input pipeline).
"""
from jaxaffect.methods.mart.method import Method

__all__ = ["Method"]
