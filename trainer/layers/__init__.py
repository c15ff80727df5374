"""Keras layers of the ETA model family, one layer per module.

Importing this package registers every layer with Keras (package "eta"), so
`tf.keras.models.load_model` can rebuild a saved model from its config.
"""

from trainer.layers.din_attention import DinAttention
from trainer.layers.retrieval import HammingTopK
from trainer.layers.sdim import SdimAggregation
from trainer.layers.simhash import SimHash
from trainer.layers.simhash import hamming_distance
from trainer.layers.simhash import pack_bits
from trainer.layers.simhash import unpack_bits
from trainer.layers.target_attention import MultiHeadTargetAttention
from trainer.layers.target_attention import target_attention

__all__ = [
    "DinAttention",
    "HammingTopK",
    "MultiHeadTargetAttention",
    "SdimAggregation",
    "SimHash",
    "hamming_distance",
    "pack_bits",
    "target_attention",
    "unpack_bits",
]
