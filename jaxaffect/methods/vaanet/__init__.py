"""VAANet (AAAI 2020): visual-audio attention with polarity-consistent cross-entropy."""
from jaxaffect.methods.vaanet.method import Method

__all__ = ["Method"]
