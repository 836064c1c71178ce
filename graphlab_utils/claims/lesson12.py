"""Lesson 12 · torch.compile's CUDA graphs and piecewise graphs: what people trip on, proved.

Each claim starts from a fresh compiler state (``torch.compiler.reset()``) and leaves one
behind, so that the order in which claims run does not matter. The drill questions these claims
prove are in ``graphlab_utils/drills/questions.json`` (module 12), each with the public report it
comes from.
"""
from __future__ import annotations

from graphlab_utils.claims import claim
from graphlab_utils.recipes import close, seeded_randn

OVERWRITTEN = "accessing tensor output of CUDAGraphs that has been overwritten by a subsequent run"


def _model(device):
    import torch

    torch.manual_seed(12)
    return torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32)).to(
        device).eval().requires_grad_(False)


def _fresh():
    import torch

    torch.compiler.reset()


def _compiled_model(device, *seeds: int):
    """A fresh compiler, the small model, its reduce-overhead compilation and one input per seed."""
    import torch

    _fresh()
    model = _model(device)
    return (model, torch.compile(model, mode="reduce-overhead"),
            *(seeded_randn(seed, 4, 32, device=device) for seed in seeds))


@claim("reduce-overhead warms a function up on its first call, records it on the second, replays from the third", {
    "what the tree did on calls 1 to 4": ["warm-up", "record", "replay", "replay"],
    "every call equals eager": True})
def compile_warm_up_record_replay(device):
    from graphlab_utils.checks.lesson12 import watch_trees

    model, compiled, x = _compiled_model(device, 1)
    equal = True
    with watch_trees() as seen:
        for _ in range(4):
            equal = equal and close(seen.call(compiled, x), model(x))
    _fresh()
    return {"what the tree did on calls 1 to 4": seen.labels, "every call equals eager": equal}


@claim("reduce-overhead records one graph per input shape; a size seen once never replays", {
    "batches of 4, 4, 4, 8, 8, 8, 4 (dynamic=False)": ["warm-up", "record", "replay", "warm-up", "record",
                                                       "replay", "replay"],
    "graphs recorded": 2, "replays over 6 batches of new sizes": 0})
def compile_records_per_shape(device):
    import torch

    from graphlab_utils.checks.lesson12 import watch_trees

    _fresh()
    model = _model(device)
    per_shape = torch.compile(model, mode="reduce-overhead", dynamic=False)
    with watch_trees() as seen:
        for n in (4, 4, 4, 8, 8, 8, 4):
            seen.call(per_shape, seeded_randn(n, n, 32, device=device))
    default = torch.compile(model, mode="reduce-overhead")
    with watch_trees() as ragged:
        for n in (3, 9, 5, 12, 7, 10):
            ragged.call(default, seeded_randn(n, n, 32, device=device))
    _fresh()
    return {"batches of 4, 4, 4, 8, 8, 8, 4 (dynamic=False)": seen.labels, "graphs recorded": seen.count("record"),
            "replays over 6 batches of new sizes": ragged.count("replay")}


@claim("reading the output of an earlier call after a later call began a new generation raises", {
    "reading the first call's output after the second call": "RuntimeError",
    "the error says the output was overwritten by a subsequent run": True,
    "a clone taken before the second call is right": True})
def compile_overwritten_output(device):
    model, compiled, x1, x2 = _compiled_model(device, 2, 3)
    y1 = compiled(x1)
    kept = y1.clone()
    compiled(x2)
    try:
        y1.sum()
        raised, says = "no error", False
    except RuntimeError as exc:
        raised, says = "RuntimeError", OVERWRITTEN in str(exc)
    right = close(kept, model(x1))
    _fresh()
    return {"reading the first call's output after the second call": raised,
            "the error says the output was overwritten by a subsequent run": says,
            "a clone taken before the second call is right": right}


@claim("replays return the same output tensor, which the next replay overwrites without an error", {
    "the outputs of two replays are one tensor": True, "the first output now holds the second result": True,
    "a clone keeps the first result": True})
def compile_replay_overwrites_in_place(device):
    model, compiled, x1, x2 = _compiled_model(device, 4, 5)
    for _ in range(3):
        compiled(x1)
    a = compiled(x1)
    b = compiled(x2)
    same, holds_second = a is b, close(a, model(x2))
    kept = compiled(x1).clone()
    compiled(x2)
    right = close(kept, model(x1))
    _fresh()
    return {"the outputs of two replays are one tensor": same,
            "the first output now holds the second result": holds_second, "a clone keeps the first result": right}


@claim("cudagraph_mark_step_begin() makes one generation per step: two calls of a step keep both outputs", {
    "what the tree did in steps 1 to 3": [["warm-up", "eager"], ["record", "record"], ["replay", "replay"]],
    "both outputs right in every step": True, "graphs recorded": 2})
def compile_mark_step_keeps_one_step(device):
    import torch

    from graphlab_utils.checks.lesson12 import watch_trees

    model, compiled, x1, x2 = _compiled_model(device, 6, 7)
    steps, right = [], True
    with watch_trees() as seen:
        for _ in range(3):
            torch.compiler.cudagraph_mark_step_begin()
            a = seen.call(compiled, x1)
            b = seen.call(compiled, x2)
            right = right and close(a, model(x1)) and close(b, model(x2))
            steps.append(seen.labels[-2:])
    recorded = seen.count("record")
    _fresh()  # also sets the step counter back: later calls start a generation each again
    return {"what the tree did in steps 1 to 3": steps, "both outputs right in every step": right,
            "graphs recorded": recorded}


@claim("a compiled function that updates an input in place runs without CUDA graphs, and says why once", {
    "skip reasons logged over 3 calls": ["skipping cudagraphs due to mutated inputs (1 instances)"],
    "calls that replayed a graph": 0, "the input was updated 3 times": True,
    "the same update on a registered buffer is graphed": True})
def compile_skip_mutated_input(device):
    import torch

    from graphlab_utils.checks.lesson12 import watch_trees

    _fresh()

    def accumulate(total, x):
        total.add_(x)
        return total * 2

    total = torch.zeros(4, 32, device=device)
    x = seeded_randn(8, 4, 32, device=device)
    compiled = torch.compile(accumulate, mode="reduce-overhead")
    with watch_trees() as seen:
        for _ in range(3):
            seen.call(compiled, total, x)

    class Accumulator(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("total", torch.zeros(4, 32, device=device))

        def forward(self, v):
            self.total.add_(v)
            return self.total * 2

    module = Accumulator()
    graphed = torch.compile(module, mode="reduce-overhead")
    with watch_trees() as buffered:
        for _ in range(4):
            buffered.call(graphed, x)
    _fresh()
    return {"skip reasons logged over 3 calls": seen.skips, "calls that replayed a graph": seen.count("replay"),
            "the input was updated 3 times": close(total, 3 * x),
            "the same update on a registered buffer is graphed": buffered.count("replay") == 2
            and close(module.total, 4 * x)}


@claim("a copy to the CPU inside a compiled function leaves all of it without CUDA graphs", {
    "skip reason (without the node's name)": "skipping cudagraphs due to cpu device",
    "calls that replayed a graph": 0, "the same function without .cpu() replays": True})
def compile_skip_cpu_copy(device):
    import torch

    from graphlab_utils.checks.lesson12 import watch_trees

    _fresh()
    model = _model(device)
    x = seeded_randn(9, 4, 32, device=device)
    on_cpu = torch.compile(lambda v: model(v).argmax(dim=-1).cpu(), mode="reduce-overhead")
    on_device = torch.compile(lambda v: model(v).argmax(dim=-1), mode="reduce-overhead")
    with watch_trees() as seen:
        for _ in range(3):
            seen.call(on_cpu, x)
    with watch_trees() as kept:
        for _ in range(3):
            kept.call(on_device, x)
    _fresh()
    reason = seen.skips[0].split(" (")[0] if seen.skips else None
    return {"skip reason (without the node's name)": reason, "calls that replayed a graph": seen.count("replay"),
            "the same function without .cpu() replays": kept.count("replay") == 1}


def _piecewise(device, out_buffer: bool):
    """Lesson 12's piecewise runner for one bucket; attention writes into the buffer or returns a new tensor."""
    import torch

    from graphlab_utils import piecewise
    from graphlab_utils.recipes import warm_up

    model = piecewise.TinyDecoder(device)
    cache = piecewise.KVCache(model.cfg, device)
    cache.fill()
    batch = piecewise.decode_batch([5, 17, 40, 3], device, seed=1)
    expected = model.forward(batch, cache.clone())
    n = batch.num_tokens
    pieces = model.pieces()
    tokens = torch.zeros(n, dtype=torch.long, device=device)
    attn = [torch.zeros(n, model.cfg.dim, device=device) for _ in range(model.cfg.layers)]

    def run(capture_into=None):
        args, outs = (tokens,), []
        for i, piece in enumerate(pieces):
            if capture_into is not None:
                capture_into.append(torch.cuda.CUDAGraph())
                with torch.cuda.graph(capture_into[-1]):
                    out = piece(*args)
            else:
                out = piece(*args)
            outs.append(out)
            if i < len(pieces) - 1:
                args = (out[0], attn[i])
        return outs

    warm_up(run)
    graphs = []
    outs = run(graphs)
    tokens.copy_(batch.tokens)
    for i, graph in enumerate(graphs):
        graph.replay()
        if i < len(graphs) - 1:
            _, q, k, v = outs[i]
            piecewise.attention(q, k, v, cache, i, batch.slots, batch.positions, batch.kv_len,
                                out=attn[i] if out_buffer else None)
    return close(outs[-1], expected)


@claim("a piece captured after attention reads attention's output at its captured address", {
    "attention returns a new tensor: piecewise equals eager": False,
    "attention writes into the buffer the next piece reads: piecewise equals eager": True})
def piecewise_stale_attention_output(device):
    return {"attention returns a new tensor: piecewise equals eager": _piecewise(device, out_buffer=False),
            "attention writes into the buffer the next piece reads: piecewise equals eager": _piecewise(device, True)}


@claim("attention metadata captured in a full graph is frozen: kv_len baked at capture truncates longer sequences", {
    "captured with the batch's kv_len (48), same batch": True,
    "captured with kv_len 48, a sequence grown to position 100": False,
    "captured with the cache's capacity (128), the grown batch": True})
def full_graph_frozen_kv_len(device):
    import torch

    from graphlab_utils import piecewise
    from graphlab_utils.recipes import capture

    model = piecewise.TinyDecoder(device)
    cache = piecewise.KVCache(model.cfg, device)
    cache.fill()
    short = piecewise.decode_batch([5, 17, 40, 3], device, seed=1)
    longer = piecewise.decode_batch([5, 17, 100, 3], device, seed=1)
    tokens = torch.zeros(4, dtype=torch.long, device=device)
    slots = torch.zeros(4, dtype=torch.long, device=device)
    positions = torch.zeros(4, dtype=torch.long, device=device)

    def graph_for(kv_len):
        return capture(lambda: model.run(tokens, slots, positions, kv_len, cache))

    def replay(graph_and_out, batch):
        graph, out = graph_and_out
        tokens.copy_(batch.tokens)
        slots.copy_(batch.slots)
        positions.copy_(batch.positions)
        expected = model.forward(batch, cache.clone())
        graph.replay()
        return close(out, expected)

    frozen = graph_for(short.kv_len)
    capacity = graph_for(model.cfg.max_len)
    return {"captured with the batch's kv_len (48), same batch": replay(frozen, short),
            "captured with kv_len 48, a sequence grown to position 100": replay(frozen, longer),
            "captured with the cache's capacity (128), the grown batch": replay(capacity, longer)}
