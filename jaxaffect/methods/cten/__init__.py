"""CTEN (Zhang et al., CVPR 2023): cross-modal temporal erasing network."""
from jaxaffect.methods.cten.method import Method

__all__ = ["Method"]
