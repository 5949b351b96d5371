"""The message-passing network of Gilmer et al. 2017 ("Neural Message Passing for Quantum
Chemistry", ICML, arXiv:1704.01212) as the QM9 benchmark of Nash-MTL (Navon et al. 2022,
arXiv:2202.01017; AvivNavon/nash-mtl ``experiments/quantum_chemistry/models.py``) and FAMO builds it
from PyTorch Geometric's ``examples/qm9_nn_conv.py``: the shared part of a model with one linear
head per target."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mtl.graphs import Batch, NNConv, Set2Set
from mtl.models.encoders import Encoder


class MPNN(Encoder):
    """Node features ``(N, input_shape[0])`` of a batch of graphs to one vector ``(G, dim)`` per graph.

    ``h⁰ = ReLU(W₀ x)``; then ``steps`` rounds of an edge-conditioned convolution (NNConv: the
    message from ``j`` to ``i`` is ``A(e_ij) h_j``, ``A`` an MLP ``edge_features → edge_hidden →
    dim²`` of the edge's features, averaged over the neighbours; eq. 5 of Gilmer et al. with the
    edge network of their Section 5.1) whose ReLU output updates the node states through one GRU
    cell shared by the rounds; then Set2Set readout (Vinyals et al. 2016, ``readout_steps``
    processing steps) to ``2·dim`` and ``ReLU(Linear(2·dim, dim))``. The defaults are Nash-MTL's:
    ``dim=64``, three rounds, three Set2Set steps, an edge network of width 128, and five edge
    features (QM9's four bond types and the distance).
    """

    def __init__(self, input_shape: Sequence[int], edge_features: int = 5, dim: int = 64, steps: int = 3, readout_steps: int = 3, edge_hidden: int = 128) -> None:
        super().__init__()
        self.embed = nn.Linear(input_shape[0], dim)
        edge_network = nn.Sequential(nn.Linear(edge_features, edge_hidden), nn.ReLU(), nn.Linear(edge_hidden, dim * dim))
        self.convolution = NNConv(dim, dim, edge_network, aggr="mean")
        self.update = nn.GRU(dim, dim)
        self.readout = Set2Set(dim, processing_steps=readout_steps)
        self.project = nn.Linear(2 * dim, dim)
        self.steps = steps
        self.out_features = dim

    def forward(self, graphs: Batch) -> torch.Tensor:
        nodes = torch.relu(self.embed(graphs.x))
        state = nodes.unsqueeze(0)
        for _ in range(self.steps):
            messages = torch.relu(self.convolution(nodes, graphs.edge_index, graphs.edge_attr))
            nodes, state = self.update(messages.unsqueeze(0), state)
            nodes = nodes.squeeze(0)
        pooled = self.readout(nodes, graphs.batch, dim_size=graphs.num_graphs)
        return torch.relu(self.project(pooled))
