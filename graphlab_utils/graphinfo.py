"""What a captured graph holds: node count, node kinds, edges, parallel branches.

Works on both backends through `graphlab_utils.cudart` (NVIDIA's runtime bindings on a GPU,
the simulator's twin otherwise). The graph must be captured with `keep_graph=True`, as
PyTorch only keeps the cudaGraph_t then.
"""
from __future__ import annotations

import collections
import os
import re
import tempfile
from dataclasses import dataclass, field

from graphlab_utils import cudart as _cudart_module
from graphlab_utils.cudart import check

_NODE = re.compile(r'^\s*"([^"]+)"\s*\[')
_EDGE = re.compile(r'^\s*"([^"]+)"\s*->\s*"([^"]+)"')


def _raw(graph) -> int:
    try:
        return graph.raw_cuda_graph()
    except RuntimeError as exc:
        raise ValueError(
            "this graph keeps no cudaGraph_t: create it with torch.cuda.CUDAGraph(keep_graph=True) "
            "to inspect its nodes (lesson 08)"
        ) from exc


def node_count(graph) -> int:
    """Number of nodes of a graph captured with keep_graph=True."""
    rt = _cudart_module.runtime()
    _nodes, count = check(rt.cudaGraphGetNodes(_raw(graph), 0))
    return int(count)


def node_types(graph) -> collections.Counter:
    """How many nodes of each kind ('Kernel', 'Memcpy', 'Memset', ...)."""
    rt = _cudart_module.runtime()
    raw = _raw(graph)
    _nodes, count = check(rt.cudaGraphGetNodes(raw, 0))
    nodes, _count = check(rt.cudaGraphGetNodes(raw, count))
    kinds = collections.Counter()
    for n in nodes:
        kind = check(rt.cudaGraphNodeGetType(n))
        kinds[kind.name.replace("cudaGraphNodeType", "")] += 1
    return kinds


def dot_source(graph) -> str:
    """The DOT text cudaGraphDebugDotPrint writes for the graph."""
    rt = _cudart_module.runtime()
    fd, path = tempfile.mkstemp(suffix=".dot")
    os.close(fd)
    try:
        check(rt.cudaGraphDebugDotPrint(_raw(graph), path.encode(), 0))
        with open(path) as fh:
            return fh.read()
    finally:
        os.unlink(path)


@dataclass
class Structure:
    nodes: list
    edges: list  # (from, to) node names
    kinds: collections.Counter = field(default_factory=collections.Counter)

    @property
    def roots(self) -> list:
        has_parent = {b for _, b in self.edges}
        return [n for n in self.nodes if n not in has_parent]

    def in_degree(self) -> dict:
        deg = {n: 0 for n in self.nodes}
        for _, b in self.edges:
            deg[b] = deg.get(b, 0) + 1
        return deg

    @property
    def max_in_degree(self) -> int:
        return max(self.in_degree().values(), default=0)

    @property
    def width(self) -> int:
        """Most nodes at one depth: 1 for a chain, 2 for two parallel branches."""
        parents = collections.defaultdict(list)
        for a, b in self.edges:
            parents[b].append(a)
        depth: dict = {}

        def d(n):
            if n not in depth:
                depth[n] = 1 + max((d(p) for p in parents[n]), default=-1)
            return depth[n]

        for n in self.nodes:
            d(n)
        return max(collections.Counter(depth.values()).values(), default=0)


def structure(graph) -> Structure:
    """Nodes and edges of the graph (from its DOT dump) plus node kinds."""
    nodes, edges = [], []
    for line in dot_source(graph).splitlines():
        m = _EDGE.match(line)
        if m:
            edges.append((m.group(1), m.group(2)))
            continue
        m = _NODE.match(line)
        if m:
            nodes.append(m.group(1))
    return Structure(nodes=nodes, edges=edges, kinds=node_types(graph))
