"""eagle_ops: the hot-path ops of EAGLE speculative decoding as ``torch.library`` custom ops.

Every op is reachable as ``torch.ops.eagle_ops.<name>`` and through the typed function of the same name here.
Contracts: ``eagle_ops/README.md`` and each function's docstring.
"""

from eagle_ops._library import triton_on_cpu
from eagle_ops.build_tree import build_tree
from eagle_ops.kv_copy_ import kv_copy_
from eagle_ops.posterior_greedy import posterior_greedy
from eagle_ops.posterior_sample import posterior_sample
from eagle_ops.topk_expand import Expansion, topk_expand
from eagle_ops.tree_attention import tree_attention
from eagle_ops.tree_mask import tree_mask

__all__ = [
    "Expansion",
    "build_tree",
    "kv_copy_",
    "posterior_greedy",
    "posterior_sample",
    "topk_expand",
    "tree_attention",
    "tree_mask",
    "triton_on_cpu",
]
