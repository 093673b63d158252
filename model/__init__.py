"""The EAGLE runtime on top of eagle_ops: a hooked ``transformers`` target, EAGLE-1/3 draft heads in the official
checkpoint format, static caches and a static-shape decode step."""

from model.checkpoint import load_head, save_head
from model.config import DynamicTree, StaticTree, Tree
from model.eagle_model import EagleModel
from model.generate import GenerationResult
from model.heads import Eagle1Head, Eagle3Head, HeadConfig, eagle3_feature_layers, make_head

__all__ = [
    "DynamicTree",
    "Eagle1Head",
    "Eagle3Head",
    "EagleModel",
    "GenerationResult",
    "HeadConfig",
    "StaticTree",
    "Tree",
    "eagle3_feature_layers",
    "load_head",
    "make_head",
    "save_head",
]
