"""Cellpose-style family (``"cellpose"``): flows to the cell centre + cell probability.

Stringer et al. 2021: for every cell pixel the network predicts the unit vector of a diffusion
flow towards the cell's centre (times 5) and a cell-probability logit; following the flows groups
pixels into instances. Mask reconstruction uses the ``cellpose`` 4 package's dynamics, which run
on a CPU as well; the flow targets are its diffusion's steady state, solved directly.

Sparse labels (Sugawara 2023): targets come from the *annotated* instances only; annotated
background gets probability 0 and zero flow; unlabelled pixels (-1) are excluded from both loss
terms, which are averaged over labelled pixels only.

Target channels: ``0, 1`` flow (row, column; unit vectors), ``2`` cell probability (0/1),
``3`` labelled mask (1 labelled, 0 unlabelled). Output channels: ``0, 1`` flow x5, ``2`` logit.

Modules: :mod:`.flows` (the flow field and the targets), :mod:`.reconstruction` (masks from an
output), :mod:`.quality` (Cellpose's flow quality control and its calibration), :mod:`.family`
(config, loss, registry entry). Each imports only the ones before it: no cycle.
"""

from __future__ import annotations

from cellsparse_app.models.cellpose.family import CellposeConfig, CellposeFamily, masked_loss
from cellsparse_app.models.cellpose.flows import (
    FLOW_SCALE,
    flow_targets,
    instance_flows,
    unit_flows,
)
from cellsparse_app.models.cellpose.reconstruction import (
    MAX_SIZE_FRACTION,
    reconstruct_instances,
    recover_unseeded_objects,
)

__all__ = [
    "FLOW_SCALE", "MAX_SIZE_FRACTION", "CellposeConfig", "CellposeFamily", "flow_targets",
    "instance_flows", "masked_loss", "reconstruct_instances", "recover_unseeded_objects",
    "unit_flows",
]
