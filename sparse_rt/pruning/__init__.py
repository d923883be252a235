"""The training side: pruners that mask linear layers, and trainable structured layers.

Pruners work on any nn.Module's nn.Linear and nn.Conv2d (groups=1) layers (chosen by a
`filter_fn(module, name)`), attach masks as parametrizations that keep pruned
weights exactly zero through training (`masks`), and `finalize` bakes them into
plain layers. One-shot pruners (`wanda_prune`, `sparsegpt_prune`) take calibration
batches and prune layer by layer (`calibration`). Structured pruning maps exactly onto BsrFormat and NmFormat; the
structured layers convert to ButterflyFormat and PermutedFormat by `to_format()`.
"""

from sparse_rt.pruning.butterfly import ButterflyLinear
from sparse_rt.pruning.gradual import CubicSchedule, GradualPruner
from sparse_rt.pruning.lottery import LotteryTicket, imp_sparsities
from sparse_rt.pruning.magnitude import magnitude_masks, magnitude_prune
from sparse_rt.pruning.masks import apply_masks, densities, finalize, get_masks, prunable_layers
from sparse_rt.pruning.permuted import PermutedBlockLinear
from sparse_rt.pruning.structured import block_masks, block_prune, nm_masks, nm_prune

from sparse_rt.pruning.dst import SET, CosineDropSchedule, DynamicSparseTraining, RigL, erk_densities
from sparse_rt.pruning.dst import layer_keep_counts, random_masks
from sparse_rt.pruning.init_pruning import grasp_prune, grasp_scores, snip_prune, snip_scores
from sparse_rt.pruning.init_pruning import synflow_prune, synflow_scores
from sparse_rt.pruning.sparsegpt import sparsegpt_prune
from sparse_rt.pruning.wanda import wanda_prune
from sparse_rt.pruning.reinit import sign_constant_reinit
from sparse_rt.pruning.topologies import TOPOLOGIES, graph_metrics, network_laplacian, topology_mask

__all__ = [
    "apply_masks",
    "block_masks",
    "block_prune",
    "ButterflyLinear",
    "CosineDropSchedule",
    "CubicSchedule",
    "densities",
    "DynamicSparseTraining",
    "erk_densities",
    "finalize",
    "get_masks",
    "GradualPruner",
    "graph_metrics",
    "grasp_prune",
    "grasp_scores",
    "imp_sparsities",
    "layer_keep_counts",
    "LotteryTicket",
    "magnitude_masks",
    "magnitude_prune",
    "network_laplacian",
    "nm_masks",
    "nm_prune",
    "PermutedBlockLinear",
    "prunable_layers",
    "random_masks",
    "RigL",
    "SET",
    "sparsegpt_prune",
    "sign_constant_reinit",
    "snip_prune",
    "snip_scores",
    "synflow_prune",
    "synflow_scores",
    "TOPOLOGIES",
    "topology_mask",
    "wanda_prune",
]
