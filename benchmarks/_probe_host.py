import os, sys, time, statistics
sys.path.insert(0, os.getcwd())
import torch
mode = sys.argv[1]
if mode == "sim_import":
    import graphlab_utils.simulator
if mode == "setup":
    import graphlab_utils; graphlab_utils.setup(backend="real", quiet=True)
from graphlab_utils import workloads
from graphlab_utils.timing import measure
fn, _ = workloads.chain(100, torch.device("cuda"))
out = []
for r in range(5):
    out.append(measure(fn, warmup=3, repeat=20).median_ms * 10)  # us per op
print(mode, [round(x, 2) for x in out], "modes:", torch._C._len_torch_function_stack() if hasattr(torch._C, "_len_torch_function_stack") else "?", torch._C._len_torch_dispatch_stack() if hasattr(torch._C, "_len_torch_dispatch_stack") else "?", "gc:", __import__("gc").get_count())
