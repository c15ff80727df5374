"""Keras layers of the ETA model family, one layer per module.

Importing this package registers every layer with Keras (package "eta"), so
`tf.keras.models.load_model` can rebuild a saved model from its config. Plain
functions stay in their modules (e.g. `trainer.layers.simhash.hamming_distance`,
`trainer.layers.target_attention.target_attention`); exporting them here would
shadow the submodule of the same name.
"""

from trainer.layers.din_attention import DinAttention
from trainer.layers.piecewise_linear import PiecewiseLinearEncoding
from trainer.layers.retrieval import HammingTopK
from trainer.layers.sam import SparseAttentiveMemory
from trainer.layers.sdim import SdimAggregation
from trainer.layers.simhash import SimHash
from trainer.layers.target_attention import MultiHeadTargetAttention

__all__ = [
    "DinAttention",
    "HammingTopK",
    "MultiHeadTargetAttention",
    "PiecewiseLinearEncoding",
    "SdimAggregation",
    "SparseAttentiveMemory",
    "SimHash",
]
