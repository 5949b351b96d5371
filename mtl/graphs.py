"""PyTorch Geometric (Fey & Lenssen 2019, arXiv:1903.02428), an optional dependency: the graph
benchmark (``data=qm9``) and its model (``model=mpnn``) import it from here, so that its absence
stops them with the extra to install, and everything else runs without it."""

try:
    from torch_geometric.data import Batch, Data
    from torch_geometric.datasets import QM9
    from torch_geometric.nn import NNConv
    from torch_geometric.nn.aggr import Set2Set
    from torch_geometric.transforms import Distance
    from torch_geometric.utils import remove_self_loops
except ImportError as error:
    raise ImportError(f"data=qm9 and model=mpnn need PyTorch Geometric ({error}); install the extra: pip install -e '.[graph]'") from error

__all__ = ["QM9", "Batch", "Data", "Distance", "NNConv", "Set2Set", "remove_self_loops"]
