"""Reusable spiking layers: neurons, quantized synapses, time helpers."""
from .neurons import IFNeuron, LIFNeuron, SpikingNeuron, TSSLNeuron, psp_filter
from .quant import QuantConv2d, QuantLinear, is_quantized, quantize, quantized_modules, weight_codes
from .time import constant_over_time, over_time

__all__ = [
    "IFNeuron",
    "LIFNeuron",
    "SpikingNeuron",
    "TSSLNeuron",
    "psp_filter",
    "QuantConv2d",
    "QuantLinear",
    "is_quantized",
    "quantize",
    "quantized_modules",
    "weight_codes",
    "constant_over_time",
    "over_time",
]
