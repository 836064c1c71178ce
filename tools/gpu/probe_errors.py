"""Print what each failing capture of the lessons reports on this backend, and a DOT dump.

Lessons show failing captures with %%run_isolated and store the one-line summary; this
script gathers those summaries in one run so they can be compared across backends.
Usage: python3 tools/gpu/probe_errors.py OUT.json
"""
from __future__ import annotations

import json
import sys

import graphlab_utils as gl
from graphlab_utils.isolation import run_isolated

SNIPPETS = {
    "item": "x = torch.randn(8, device=DEVICE)\ng = torch.cuda.CUDAGraph()\nwith torch.cuda.graph(g):\n    y = x.sum()\n    y.item()\n",
    "print": "x = torch.randn(8, device=DEVICE)\ng = torch.cuda.CUDAGraph()\nwith torch.cuda.graph(g):\n    y = x * 2\n    print(y)\n",
    "cpu": "x = torch.randn(8, device=DEVICE)\ng = torch.cuda.CUDAGraph()\nwith torch.cuda.graph(g):\n    y = (x * 2).cpu()\n",
    "synchronize": "x = torch.randn(8, device=DEVICE)\ng = torch.cuda.CUDAGraph()\nwith torch.cuda.graph(g):\n    y = x * 2\n    torch.cuda.synchronize()\n",
    "data_dependent_if": "x = torch.randn(8, device=DEVICE)\ng = torch.cuda.CUDAGraph()\nwith torch.cuda.graph(g):\n    y = x * 2 if x.sum() > 0 else x * 3\n",
    "bool_mask_index": "x = torch.randn(8, device=DEVICE)\ng = torch.cuda.CUDAGraph()\nwith torch.cuda.graph(g):\n    y = x[x > 0]\n",
    "default_stream": "g = torch.cuda.CUDAGraph()\ng.capture_begin()\n",
    "unforked_stream": "x = torch.randn(1 << 16, device=DEVICE)\ns = torch.cuda.Stream()\ng = torch.cuda.CUDAGraph()\nwith torch.cuda.graph(g):\n    y = x * 2\n    with torch.cuda.stream(s):\n        z = x + 1\n",
    "unjoined_stream": "x = torch.randn(1024, device=DEVICE)\ns = torch.cuda.Stream()\ng = torch.cuda.CUDAGraph()\nwith torch.cuda.graph(g):\n    y = x * 2\n    s.wait_stream(torch.cuda.current_stream())\n    with torch.cuda.stream(s):\n        z = x + 1\n",
    "relaxed_unforked_stream": "x = torch.randn(1 << 16, device=DEVICE)\ns = torch.cuda.Stream()\ng = torch.cuda.CUDAGraph()\nwith torch.cuda.graph(g, capture_error_mode='relaxed'):\n    y = x * 2\n    with torch.cuda.stream(s):\n        z = x + 1\nprint('relaxed capture ended')\n",
    "relaxed_item": "x = torch.randn(8, device=DEVICE)\ng = torch.cuda.CUDAGraph()\nwith torch.cuda.graph(g, capture_error_mode='relaxed'):\n    y = x.sum()\n    y.item()\n",
    "after_failure_randn": "x = torch.randn(8, device=DEVICE)\ng = torch.cuda.CUDAGraph()\ntry:\n    with torch.cuda.graph(g):\n        x.sum().item()\nexcept Exception:\n    pass\ntorch.randn(4, device=DEVICE)\n",
}


def main(path: str) -> None:
    session = gl.setup(quiet=True)
    report = {"backend": session.backend}
    for name, code in SNIPPETS.items():
        r = run_isolated(code)
        report[name] = {"summary": r.summary(), "stdout": r.stdout.strip()}
        print(f"{name:24s} {r.summary()}")
    import torch

    from graphlab_utils import graphinfo

    x = torch.randn(1024, device=session.device)
    side = torch.cuda.Stream()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    g = torch.cuda.CUDAGraph(keep_graph=True)
    with torch.cuda.graph(g):
        main_stream = torch.cuda.current_stream()
        side.wait_stream(main_stream)
        a = x * 2
        with torch.cuda.stream(side):
            b = x + 1
        main_stream.wait_stream(side)
        c = a + b
    report["fork_join_dot"] = graphinfo.dot_source(g)
    st = graphinfo.structure(g)
    report["fork_join_structure"] = {"nodes": len(st.nodes), "edges": st.edges, "kinds": dict(st.kinds), "width": st.width}
    print("fork/join structure:", report["fork_join_structure"])
    # cudaGraphExecUpdate when a kernel node changes its kernel, its shape, or a baked scalar.
    from graphlab_utils import cudart

    rt = cudart.runtime()

    def capture(fn):
        gg = torch.cuda.CUDAGraph(keep_graph=True)
        with torch.cuda.graph(gg):
            out = fn()
        return gg, out

    a = torch.randn(1024, device=session.device)
    b = torch.randn(2048, device=session.device)
    base, _ = capture(lambda: a + 1)
    base.instantiate()
    updates = {}
    for name, fn in {"other_kernel": lambda: a * 2, "other_shape": lambda: b + 1, "other_scalar": lambda: a + 5}.items():
        other, out = capture(fn)
        err, info = rt.cudaGraphExecUpdate(base.raw_cuda_graph_exec(), other.raw_cuda_graph())
        ok = None
        if err == rt.cudaError_t.cudaSuccess:
            base.replay()
            torch.cuda.synchronize()
            ok = bool(torch.allclose(out, fn()))
        updates[name] = {"error": err.name, "result_used": ok}
        print(f"exec update with {name:14s} {err.name} result used: {ok}")
    report["exec_update_changes"] = updates
    with open(path, "w") as fh:
        json.dump(report, fh, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
