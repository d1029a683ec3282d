"""Training recipes that make the zoo's weights: fp32 pre-training, ANN-to-SNN conversion and CBP.

Models never import this package; it imports them.
"""
