"""Cellpose's flow field: unit vectors towards each cell's centre, and the training targets.

Stringer et al. 2021 define the flows as the normalised gradient of a heat diffusion from each
cell's centre with absorbing borders; :func:`instance_flows` solves for its steady state.
"""

from __future__ import annotations

import numpy as np

from cellsparse_app.data.labels import relabel_sequential, validate_labels

#: Cellpose scales unit flows by 5 in the network output.
FLOW_SCALE = 5.0


def instance_flows(instances: np.ndarray) -> np.ndarray:
    """Cellpose flows (unit vectors towards each cell's centre, ``float32 (2, H, W)``).

    Cellpose defines the flows as the normalised gradient of a heat diffusion from the cell's
    centre (the pixel nearest its mean) with absorbing cell borders, iterated ``2 x extent`` times
    (``cellpose.dynamics.masks_to_flows_gpu``). We solve for the diffusion's *steady state*
    directly with a sparse linear solve: the same field up to convergence (cosine similarity
    0.999 with Cellpose's on DSB nuclei) and 15-100x faster on a CPU, which matters because
    targets of every training image are computed on each training call.

    Args:
        instances: ``(H, W)`` integers, 0 nothing, 1..N instances.
    """
    instances = np.asarray(instances)
    height, width = instances.shape
    flows = np.zeros((2, height, width), np.float32)
    padded = np.pad(instances.astype(np.int64, copy=False), 1)
    rows, cols = np.nonzero(padded)
    if len(rows) == 0:
        return flows
    ids = padded[rows, cols]
    heat = np.zeros(padded.shape, np.float64)
    # Solve in groups of whole cells so that huge images keep the sparse systems small.
    order = np.argsort(ids, kind="stable")
    rows, cols, ids = rows[order], cols[order], ids[order]
    cell_edges = np.append(np.flatnonzero(np.diff(ids)) + 1, len(rows))
    group_edges, previous = [0], 0
    for edge in cell_edges:
        if edge - group_edges[-1] > MAX_SYSTEM_PIXELS and previous > group_edges[-1]:
            group_edges.append(previous)
        previous = int(edge)
    group_edges.append(len(rows))
    for start, stop in zip(group_edges[:-1], group_edges[1:]):
        sl = slice(start, stop)
        heat[rows[sl], cols[sl]] = _steady_heat(padded, rows[sl], cols[sl], ids[sl])
    # Neighbours in other cells are outside this cell's absorbing border: they count as 0.
    def neighbour(dr: int, dc: int) -> np.ndarray:
        same = padded[rows + dr, cols + dc] == ids
        return np.where(same, heat[rows + dr, cols + dc], 0.0)

    dy = neighbour(1, 0) - neighbour(-1, 0)
    dx = neighbour(0, 1) - neighbour(0, -1)
    centres = _centre_pixels(rows, cols, ids)
    peak = np.zeros(int(ids.max()) + 1)
    np.maximum.at(peak, ids, heat[rows, cols])
    flow_y, flow_x = unit_flows(
        dy, dx, rows - rows[centres][_cell_index(ids)], cols - cols[centres][_cell_index(ids)],
        is_centre=np.isin(np.arange(len(rows)), centres), scale=peak[ids],
    )
    flows[0, rows - 1, cols - 1] = flow_y
    flows[1, rows - 1, cols - 1] = flow_x
    return flows


#: Heat gradients below this fraction of the cell's peak heat are rounding noise, not direction.
FLAT_GRADIENT = 1e-7


def unit_flows(
    dy: np.ndarray, dx: np.ndarray, off_row: np.ndarray, off_col: np.ndarray, *,
    is_centre: np.ndarray, scale: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Unit flow vectors from heat gradients, defined where the gradient vanishes.

    Cellpose normalises the gradient (``mu / (1e-60 + |mu|)``): where the heat is flat -- the centre
    of a symmetric cell, a saddle between two lobes -- the result is 0 in exact arithmetic, and on
    real CPUs a unit vector in whatever direction the rounding noise points (it differs between
    machines with and without AVX-512). Here the result never depends on rounding:

    * the centre pixel (the heat source, where every flow path ends) gets flow 0, the sink;
    * any other pixel whose gradient is below :data:`FLAT_GRADIENT` x the cell's peak heat points
      straight at the centre;
    * every other pixel gets the normalised gradient, as in Cellpose.

    Args:
        dy, dx: central differences of the heat, per pixel.
        off_row, off_col: pixel position minus its cell's centre pixel.
        is_centre: the pixel is its cell's centre.
        scale: the cell's peak heat, per pixel.
    """
    norm = np.hypot(dy, dx)
    flat = norm <= FLAT_GRADIENT * scale
    dist = np.hypot(off_row, off_col)
    flow_y = np.where(flat, -off_row / np.maximum(dist, 1), dy / np.maximum(norm, 1e-300))
    flow_x = np.where(flat, -off_col / np.maximum(dist, 1), dx / np.maximum(norm, 1e-300))
    flow_y = np.where(is_centre, 0.0, flow_y)
    flow_x = np.where(is_centre, 0.0, flow_x)
    return flow_y, flow_x


def _cell_index(ids: np.ndarray) -> np.ndarray:
    """Per pixel, the index of its cell among ``np.unique(ids)``."""
    return np.unique(ids, return_inverse=True)[1].ravel()


#: Largest number of pixels solved in one sparse system by :func:`instance_flows`.
MAX_SYSTEM_PIXELS = 250_000


def _steady_heat(
    padded: np.ndarray, rows: np.ndarray, cols: np.ndarray, ids: np.ndarray
) -> np.ndarray:
    """Steady state ``T = A (T + e)`` of Cellpose's diffusion for the given cells' pixels.

    ``A`` averages the 3x3 neighbourhood counting other cells' pixels as 0 (absorbing borders);
    ``e`` is 1 at each cell's centre. ``(I - A) T = A e`` is a sparse, diagonally dominant system.
    """
    import scipy.sparse as sparse
    from scipy.sparse.linalg import spsolve

    n = len(rows)
    index = np.full(padded.shape, -1, np.int64)
    index[rows, cols] = np.arange(n)
    a_rows, a_cols = [], []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            nb = index[rows + dy, cols + dx]
            ok = (nb >= 0) & (padded[rows + dy, cols + dx] == ids)
            a_rows.append(np.flatnonzero(ok))
            a_cols.append(nb[ok])
    a_rows, a_cols = np.concatenate(a_rows), np.concatenate(a_cols)
    a = sparse.csr_matrix((np.full(len(a_rows), 1.0 / 9.0), (a_rows, a_cols)), shape=(n, n))
    source = np.zeros(n)
    source[_centre_pixels(rows, cols, ids)] = 1.0
    system = (sparse.identity(n, format="csr") - a).tocsc()
    return np.asarray(spsolve(system, a @ source), dtype=np.float64)


def _centre_pixels(rows: np.ndarray, cols: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Index (into ``rows``) of each cell's pixel nearest its mean position (as Cellpose)."""
    uniq, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    mean_r = np.round(np.bincount(inverse, rows) / counts)
    mean_c = np.round(np.bincount(inverse, cols) / counts)
    dist = (rows - mean_r[inverse]) ** 2 + (cols - mean_c[inverse]) ** 2
    order = np.lexsort((dist, inverse))
    first = np.searchsorted(inverse[order], np.arange(len(uniq)))
    return order[first]


def flow_targets(labels: np.ndarray) -> np.ndarray:
    """``float32 (4, H, W)`` targets of a label image: flow y, flow x, probability, labelled.

    Only annotated instances get flows; background and unlabelled pixels get zero flow, and
    unlabelled pixels get ``labelled = 0``.
    """
    labels = relabel_sequential(validate_labels(labels))
    instances = np.where(labels > 0, labels, 0)
    out = np.zeros((4, *labels.shape), np.float32)
    out[:2] = instance_flows(instances)
    out[2] = labels > 0
    out[3] = labels >= 0
    return out
