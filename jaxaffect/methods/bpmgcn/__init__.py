"""BPM-GCN (TAC 2024): bilateral posture/movement graph convolution on gait."""
from jaxaffect.methods.bpmgcn.method import Method

__all__ = ["Method"]
