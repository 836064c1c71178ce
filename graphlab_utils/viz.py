"""Pictures of what a CUDA graph holds, drawn with matplotlib.

* ``draw_dag(structure, ax=None, title=...)``: a captured graph's DAG (a
  :class:`graphlab_utils.graphinfo.Structure`) as layered boxes and arrows, roots at the
  top. Nodes are placed by depth (the longest path from a root), so parallel branches
  sit side by side and a join sits below the branches it waits for. Each node is coloured
  by the branch it belongs to: the roots it descends from (a node that descends from
  several roots comes after a join).

The picture depends only on the graph's nodes and edges, never on the text of the
labels a backend writes into its DOT dump, so it is the same on a GPU and on the
simulator for the same graph. Labels are node numbers (in the order the graph lists its
nodes) unless you pass your own.

matplotlib is imported when a function is called, not when this module is imported.
"""

from __future__ import annotations

import collections
import types
from typing import Any, Callable, Mapping, Sequence

__all__ = ["dag_layout", "branch_of", "draw_dag"]

# Branch colours (colour-blind friendly: matplotlib's tab10 minus red/green pairs), then
# the colour of nodes that come after a join.
BRANCH_COLOURS = ("#4C78A8", "#F58518", "#54A24B", "#B279A2", "#9D755D", "#72B7B2")
JOIN_COLOUR = "#BAB0AC"


def _parents(structure) -> dict:
    parents: dict = {n: [] for n in structure.nodes}
    for a, b in structure.edges:
        parents.setdefault(b, []).append(a)
        parents.setdefault(a, [])
    return parents


def _depths(structure) -> dict:
    """Longest path from a root to each node (roots have depth 0)."""
    parents = _parents(structure)
    depth: dict = {}
    order = list(parents)

    # Iterative longest-path (graphs of thousands of nodes would overflow recursion).
    for start in order:
        if start in depth:
            continue
        stack = [(start, False)]
        while stack:
            node, ready = stack.pop()
            if node in depth:
                continue
            if ready:
                depth[node] = 1 + max((depth[p] for p in parents[node]), default=-1)
                continue
            stack.append((node, True))
            for p in parents[node]:
                if p not in depth:
                    stack.append((p, False))
    return depth


def branch_of(structure) -> dict:
    """For each node, the index of the root whose branch it is on, or -1 after a join.

    A node reachable from exactly one root belongs to that root's branch (roots are
    numbered in the order the graph lists its nodes); a node reachable from several roots
    waits for several branches: it comes after a join.
    """
    parents = _parents(structure)
    depth = _depths(structure)
    roots = [n for n in structure.nodes if not parents.get(n)]
    root_index = {r: i for i, r in enumerate(roots)}
    ancestors: dict = {}
    for node in sorted(parents, key=lambda n: depth[n]):
        if node in root_index:
            ancestors[node] = {root_index[node]}
        else:
            ancestors[node] = set().union(*(ancestors[p] for p in parents[node]))
    return {n: (next(iter(a)) if len(a) == 1 else -1) for n, a in ancestors.items()}


def dag_layout(structure) -> dict:
    """Deterministic positions ``{node: (x, y)}``: y = -depth, x spread within a layer.

    Layer 0 keeps the graph's node order; each later layer is ordered by the mean x of a
    node's parents (ties broken by the graph's node order), which keeps branches in
    columns and crossings few.
    """
    parents = _parents(structure)
    depth = _depths(structure)
    index = {n: i for i, n in enumerate(parents)}
    layers: dict = collections.defaultdict(list)
    for n in parents:
        layers[depth[n]].append(n)
    pos: dict = {}
    width = max((len(v) for v in layers.values()), default=1)
    for d in sorted(layers):
        nodes = layers[d]
        if d == 0:
            nodes = sorted(nodes, key=lambda n: index[n])
        else:
            def key(n):
                xs = [pos[p][0] for p in parents[n] if p in pos]
                return (sum(xs) / len(xs) if xs else 0.0, index[n])

            nodes = sorted(nodes, key=key)
        k = len(nodes)
        for i, n in enumerate(nodes):
            x = (i - (k - 1) / 2.0) * (width / max(k, 1)) if k > 1 else 0.0
            pos[n] = (x, -float(d))
    # Keep a lone node of a layer under its parents when they are off-centre.
    for d in sorted(layers):
        nodes = layers[d]
        if d > 0 and len(nodes) == 1:
            n = nodes[0]
            xs = [pos[p][0] for p in parents[n]]
            if xs:
                pos[n] = (sum(xs) / len(xs), pos[n][1])
    return pos


def _label_for(labels, node, i) -> str:
    if labels is None:
        return str(i)
    if callable(labels):
        return str(labels(node, i))
    if isinstance(labels, Mapping):
        return str(labels.get(node, i))
    if isinstance(labels, Sequence) and not isinstance(labels, str):
        return str(labels[i]) if i < len(labels) else str(i)
    raise TypeError("labels must be None, a mapping, a sequence or a callable(node, index)")


def draw_dag(
    structure,
    ax: Any = None,
    title: str | None = None,
    labels: "Mapping | Sequence | Callable | None" = None,
    legend: bool = True,
    branch_names: "Sequence[str] | None" = None,
):
    """Draw a graph's DAG: one box per node by depth, one arrow per dependency.

    ``structure`` is a :class:`graphlab_utils.graphinfo.Structure` (or anything with
    ``nodes`` and ``edges``). ``labels`` replaces the node numbers: a sequence in the
    graph's node order, a mapping from node name, or ``labels(node, index)``.
    ``branch_names`` names the branches in the legend (default "branch 1", "branch 2", ...).
    Returns the matplotlib Axes.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    nodes = list(structure.nodes)
    for a, b in structure.edges:  # edges may name nodes the node list lacks
        for n in (a, b):
            if n not in nodes:
                nodes.append(n)

    s = types.SimpleNamespace(nodes=nodes, edges=list(structure.edges))

    if ax is None:
        _fig, ax = plt.subplots(figsize=(4, 4))
    pos = dag_layout(s)
    branch = branch_of(s)
    index = {n: i for i, n in enumerate(nodes)}
    box_w, box_h = 0.62, 0.42

    for a, b in s.edges:
        (xa, ya), (xb, yb) = pos[a], pos[b]
        ax.annotate(
            "",
            xy=(xb, yb + box_h / 2),
            xytext=(xa, ya - box_h / 2),
            arrowprops=dict(arrowstyle="-|>", color="#555555", lw=1.2, shrinkA=0, shrinkB=0),
            zorder=1,
        )
    for n in nodes:
        x, y = pos[n]
        b = branch[n]
        colour = JOIN_COLOUR if b < 0 else BRANCH_COLOURS[b % len(BRANCH_COLOURS)]
        ax.add_patch(
            FancyBboxPatch(
                (x - box_w / 2, y - box_h / 2), box_w, box_h,
                boxstyle="round,pad=0.02,rounding_size=0.08",
                facecolor=colour, edgecolor="#333333", lw=1.0, zorder=2,
            )
        )
        ax.text(x, y, _label_for(labels, n, index[n]), ha="center", va="center",
                fontsize=9, color="white" if b >= 0 else "black", zorder=3)

    xs = [p[0] for p in pos.values()] or [0.0]
    ys = [p[1] for p in pos.values()] or [0.0]
    ax.set_xlim(min(xs) - 0.8, max(xs) + 0.8)
    ax.set_ylim(min(ys) - 0.6, max(ys) + 0.6)
    ax.set_aspect("equal", adjustable="box")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=10)
    if legend and nodes:
        from matplotlib.patches import Patch

        used = sorted({b for b in branch.values()}, key=lambda b: (b < 0, b))
        handles = []
        for b in used:
            if b < 0:
                handles.append(Patch(facecolor=JOIN_COLOUR, edgecolor="#333333", label="after a join"))
            else:
                name = branch_names[b] if branch_names and b < len(branch_names) else f"branch {b + 1}"
                handles.append(Patch(facecolor=BRANCH_COLOURS[b % len(BRANCH_COLOURS)],
                                     edgecolor="#333333", label=name))
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0),
                  ncol=min(3, len(handles)), fontsize=8, frameon=False)
    return ax
