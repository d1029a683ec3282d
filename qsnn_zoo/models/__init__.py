"""Model families; importing a family registers its entries."""
from . import alexnet, cnn7, vgg
from ._base import SpikingModel
from .alexnet import TSSLAlexNet
from .cnn7 import CNN7
from .vgg import SpikingVGG

__all__ = ["SpikingModel", "SpikingVGG", "CNN7", "TSSLAlexNet", "alexnet", "cnn7", "vgg"]
