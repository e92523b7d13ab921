"""TSL-Net (ACM MM 2022): temporal sentiment localization from single-frame labels."""
from jaxaffect.methods.tsl.method import Method

__all__ = ["Method"]
