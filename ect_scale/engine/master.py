"""The optimizer's fp32 master weights, seen as fragments of named parameters, for any ZeRO stage.

DeepSpeed keeps a separate fp32 master copy that the optimizer updates; the module's low-precision parameters are
overwritten from it after every step (deepspeed 0.19.8 `runtime/zero/stage_1_and_2.py`, `stage3.py`;
docs/ARCHITECTURE.md). Forced weight normalisation and the EMAs must therefore act
on the master copy. A `Fragment` is the piece of one parameter (flattened) that this rank owns:

  * no ZeRO (fp32):      the whole parameter tensor is its own master;
  * ZeRO-1/2, BF16_Optimizer: `param._hp_mapping.hp_fragment` (a view into the flat fp32 partition) and
                         `lp_fragment_address.start/numel` (its place in the flattened parameter);
  * ZeRO-3:              `fp32_partitioned_groups_flat[g].narrow(offset, n)` at `grad_position[param_id]`,
                         covering elements [rank * partition_size, ...) of the flattened parameter.

This module reads DeepSpeed optimizer attributes (duck-typed, verified against deepspeed==0.19.8) but does not
import deepspeed. Collectives go through torch.distributed and are made on all ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional

import torch

from ect_scale.networks.weight_norm import EPS, mp_weights
from ect_scale.runtime import dist


@dataclass
class Fragment:
    name: str  # Qualified parameter name.
    shape: tuple  # Full parameter shape.
    view: torch.Tensor  # fp32 1-D view of this rank's piece of the master weights.
    start: int  # Offset of the piece in the flattened parameter.
    flat_key: int  # Storage pointer of the flat master tensor that holds the piece.
    fan_in: Optional[int] = None  # Set for MPConv weights (forced weight normalisation applies).
    row_base: int = 0  # Index of the parameter's first row in the global row vector.
    pieces: list = field(default_factory=list)  # (offset, length, first_row, n_rows) row-aligned pieces.


def storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _row_pieces(start: int, numel: int, fan: int) -> list[tuple[int, int, int, int]]:
    """Split [start, start+numel) of a row-major [rows, fan] tensor into <= 3 row-aligned pieces:
    a partial head row, a block of whole rows, a partial tail row. Returns (offset, length, first_row, n_rows)
    with n_rows = 0 marking a partial row."""
    pieces, pos, end = [], start, start + numel
    if pos % fan and pos < end:
        n = min(end, (pos // fan + 1) * fan) - pos
        pieces.append((pos - start, n, pos // fan, 0))
        pos += n
    whole = (end - pos) // fan
    if whole:
        pieces.append((pos - start, whole * fan, pos // fan, whole))
        pos += whole * fan
    if pos < end:
        pieces.append((pos - start, end - pos, pos // fan, 0))
    return pieces


class MasterWeights:
    """Fragments of the fp32 master weights that this rank owns, plus the operations defined on them."""

    def __init__(self, module: torch.nn.Module, optimizer, zero_stage: int, use_cuda_graphs: bool = False):
        self.module = module
        self.optimizer = optimizer  # The DeepSpeed (ZeRO/BF16) optimizer, or the basic torch optimizer.
        self.zero_stage = zero_stage
        self.names = [n for n, p in module.named_parameters() if p.requires_grad]
        self._mp = {n: fan for n, _, fan in mp_weights(module)}
        self._signature = None
        self.use_cuda_graphs = use_cuda_graphs
        self._graphs: dict = {}  # keys -> (sums graph, static sums, scale graph); pointers baked in: reset on rebuild.
        self.rebuild()

    # ------------------------------------------------------------------ layout
    def flats(self) -> list[torch.Tensor]:
        """The fp32 tensors this rank's optimizer updates (flat partitions, or the parameters without ZeRO)."""
        opt = self.optimizer
        if hasattr(opt, "fp32_partitioned_groups_flat"):  # ZeRO-3
            return list(opt.fp32_partitioned_groups_flat)
        if hasattr(opt, "single_partition_of_fp32_groups"):  # ZeRO-1/2
            return list(opt.single_partition_of_fp32_groups)
        if hasattr(opt, "fp32_groups_flat_partition"):  # BF16_Optimizer (ZeRO-1, bf16, fp32 accum)
            return list(opt.fp32_groups_flat_partition)
        return [p for g in opt.param_groups for p in g["params"]]  # No ZeRO: parameters are the masters.

    def rebuild(self) -> None:
        """(Re)compute the fragments; needed after DeepSpeed re-links partitions (e.g. on checkpoint load)."""
        params = dict(self.module.named_parameters())
        frags, row_base = [], 0
        for name in self.names:
            p = params[name]
            frag = self._fragment(name, p)
            fan = self._mp.get(name)
            if frag is not None:
                if fan is not None:
                    frag.fan_in, frag.row_base = fan, row_base
                    frag.pieces = _row_pieces(frag.start, frag.view.numel(), fan)
                frags.append(frag)
            if fan is not None:
                row_base += int(torch.Size(self._full_shape(p)).numel()) // fan
        self.fragments = frags
        self.num_rows = row_base
        self._graphs = {}
        self._signature = tuple(storage_key(f) for f in self.flats())

    def _full_shape(self, p: torch.nn.Parameter) -> tuple:
        return tuple(p.ds_shape) if hasattr(p, "ds_shape") else tuple(p.shape)

    def _fragment(self, name: str, p: torch.nn.Parameter) -> Optional[Fragment]:
        opt = self.optimizer
        shape = self._full_shape(p)
        if self.zero_stage == 3:
            g, offset, n = opt.grad_position[opt.get_param_id(p)]
            psize = p.ds_tensor.ds_numel
            start = dist.get_rank() * psize
            n_valid = max(0, min(psize, p.ds_numel - start))
            if n_valid == 0:
                return None
            flat = opt.fp32_partitioned_groups_flat[g]
            return Fragment(name, shape, flat.narrow(0, offset, n_valid), start, storage_key(flat))
        mapping = getattr(p, "_hp_mapping", None)
        if self.zero_stage in (1, 2) or mapping is not None:
            if mapping is None:
                return None  # Not in this rank's partition.
            addr = mapping.lp_fragment_address
            return Fragment(name, shape, mapping.hp_fragment, addr.start, storage_key(mapping.hp_fragment))
        return Fragment(name, shape, p.data.view(-1), 0, storage_key(p))

    def check_layout(self) -> None:
        if tuple(storage_key(f) for f in self.flats()) != self._signature:
            self.rebuild()

    # ------------------------------------------------------------------ forced weight normalisation
    @torch.no_grad()
    def row_sumsq(self, keys: Optional[set[int]] = None) -> torch.Tensor:
        """Global per-row sums of squares of every MPConv weight (a collective: all-reduce of a small vector)."""
        return self._reduce(self._local_sumsq(keys))

    def _selected(self, keys: Optional[set[int]]):
        return [f for f in self.fragments if f.fan_in is not None and (keys is None or f.flat_key in keys)]

    def _local_sumsq(self, keys: Optional[set[int]]) -> torch.Tensor:
        """This rank's contribution to the per-row sums of squares (no communication, no host sync)."""
        device = self.fragments[0].view.device if self.fragments else dist.device()
        sums = torch.zeros(self.num_rows, dtype=torch.float32, device=device)
        for f in self._selected(keys):
            for off, length, row, n_rows in f.pieces:
                piece = f.view.narrow(0, off, length)
                if n_rows:
                    sums[f.row_base + row : f.row_base + row + n_rows] += piece.view(n_rows, f.fan_in).square().sum(1)
                else:
                    sums[f.row_base + row] += piece.square().sum()
        return sums

    def _scale_rows_(self, sums: torch.Tensor, keys: Optional[set[int]]) -> None:
        """w_i <- w_i / (eps + ||w_i|| / sqrt(fan_in)) given the global squared row norms (EDM2 Eq. 66)."""
        for f in self._selected(keys):
            for off, length, row, n_rows in f.pieces:
                rows = sums[f.row_base + row : f.row_base + row + max(n_rows, 1)]
                scale = 1.0 / (EPS + rows.sqrt() * (f.fan_in**-0.5))
                piece = f.view.narrow(0, off, length)
                if n_rows:
                    piece.view(n_rows, f.fan_in).mul_(scale.unsqueeze(1))
                else:
                    piece.mul_(scale)

    def _reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over ranks of per-rank pieces. Without ZeRO every rank holds full replicas: nothing to sum."""
        return t if self.zero_stage == 0 else dist.all_reduce_(t)

    @torch.no_grad()
    def forced_weight_norm_(self, keys: Optional[set[int]] = None) -> None:
        """EDM2 Eq. 66 on the master weights: w_i <- w_i / (eps + ||w_i|| / sqrt(fan_in)), row by row.
        Rows split across ranks are normalised with the all-reduced row norm, so no parameter is gathered.

        On CUDA (with `use_cuda_graphs`) the two halves are replayed as CUDA graphs around the all-reduce: the
        same kernels on the same memory (bit-identical results), but two launches instead of ~10 per weight
        tensor, which matters when the host issues the step slower than the GPU runs it (EDM2-S)."""
        if not self._graphable():
            self._scale_rows_(self.row_sumsq(keys), keys)
            return
        self.check_layout()
        cache_key = frozenset(keys) if keys is not None else None
        if cache_key not in self._graphs:
            self._graphs[cache_key] = self._capture(keys)
        sums_graph, sums, scale_graph = self._graphs[cache_key]
        sums_graph.replay()
        self._reduce(sums)  # In place on the graphs' static buffer, outside the graphs (any backend).
        scale_graph.replay()

    def _graphable(self) -> bool:
        return (
            self.use_cuda_graphs
            and bool(self.fragments)
            and self.fragments[0].view.is_cuda
            and not torch.cuda.is_current_stream_capturing()
        )

    def _capture(self, keys: Optional[set[int]]):
        """Record the local sums-of-squares pass and the scaling pass as two CUDA graphs on static memory."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # Warm-up off the capture (reads the weights only; scaling is not run).
            self._local_sumsq(keys)
        torch.cuda.current_stream().wait_stream(side)
        sums_graph, scale_graph = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.cuda.graph(sums_graph):
            sums = self._local_sumsq(keys)
        with torch.cuda.graph(scale_graph, pool=sums_graph.pool()):
            self._scale_rows_(sums, keys)
        return sums_graph, sums, scale_graph

    def max_row_norm_error(self) -> float:
        """max_i | ||w_i|| / sqrt(fan_in) - 1 | over the master weights (collective)."""
        sums = self.row_sumsq()
        fans = self._row_fans(sums.device)
        return float(((sums / fans).sqrt() - 1).abs().max()) if sums.numel() else 0.0

    def _row_fans(self, device) -> torch.Tensor:
        params = dict(self.module.named_parameters())
        fans = []
        for name in self.names:
            fan = self._mp.get(name)
            if fan is not None:
                rows = int(torch.Size(self._full_shape(params[name])).numel()) // fan
                fans.append(torch.full((rows,), float(fan)))
        return torch.cat(fans).to(device) if fans else torch.zeros(0, device=device)

    # ------------------------------------------------------------------ whole tensors
    @torch.no_grad()
    def gather(
        self, sources: Optional[list[torch.Tensor]] = None, names: Optional[Iterable[str]] = None, dst_device="cpu"
    ) -> dict[str, torch.Tensor]:
        """Full fp32 tensors assembled from every rank's fragments (a collective). `sources` gives alternative
        flat tensors with the master layout (e.g. an EMA); default = the master weights themselves."""
        remap = self._remap(sources)
        wanted = set(names) if names is not None else None
        by_name = {f.name: f for f in self.fragments}
        params = dict(self.module.named_parameters())
        out = {}
        for name in self.names:
            if wanted is not None and name not in wanted:
                continue
            shape = self._full_shape(params[name])
            full = torch.zeros(int(torch.Size(shape).numel()), dtype=torch.float32, device=dist.device())
            f = by_name.get(name)
            if f is not None:
                full.narrow(0, f.start, f.view.numel()).copy_(remap(f))
            self._reduce(full)
            out[name] = full.view(shape).to(dst_device)
        return out

    @torch.no_grad()
    def scatter_(self, tensors: dict[str, torch.Tensor], targets: Optional[list[torch.Tensor]] = None) -> None:
        """Write full tensors into this rank's fragments (of the master, or of `targets` with the master layout).
        Local: every rank passes the same full tensors and keeps its own pieces."""
        remap = self._remap(targets)
        missing = [f.name for f in self.fragments if f.name not in tensors]
        if missing:
            raise KeyError(f"scatter_: no tensor for parameters {missing[:5]}")
        for f in self.fragments:
            src = tensors[f.name].reshape(-1).narrow(0, f.start, f.view.numel())
            remap(f).copy_(src.to(f.view.device, torch.float32))

    def _remap(self, flats: Optional[list[torch.Tensor]]):
        """Map a fragment to the same region of an alternative set of flat tensors with the master layout."""
        if flats is None:
            return lambda f: f.view
        masters = self.flats()
        index = {storage_key(t): i for i, t in enumerate(masters)}

        def view_in(f: Fragment) -> torch.Tensor:
            i = index[f.flat_key]
            base = masters[i]
            offset = (f.view.data_ptr() - base.data_ptr()) // base.element_size()
            return flats[i].view(-1).narrow(0, offset, f.view.numel())

        return view_in
