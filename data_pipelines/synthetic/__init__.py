"""Deterministic synthetic datasets in real formats (the embedded demo data).

`generate_ve8_style` writes VE-8-style mp4 + split lists; see affect_world.py for the world.
CLI: python -m data_pipelines.synthetic --out DIR
"""
from data_pipelines.synthetic.affect_world import generate_ve8_style  # noqa: F401
from data_pipelines.synthetic.common import VE8_CLASSES, VE8_POLARITY  # noqa: F401
