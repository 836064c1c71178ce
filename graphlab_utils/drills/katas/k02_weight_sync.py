"""Kata 2: the weight update that rebound the parameters."""
from __future__ import annotations

from graphlab_utils.checks import core
from graphlab_utils.checks.core import close, device, fail, ok
from graphlab_utils.recipes import capture, seeded_randn

from . import fixed_function, register

SNIPPET = '''\
def load_weights(model, state_dict):
    """Put the trainer's new weights (same names, shapes and device) into the serving model."""
    for name, param in model.named_parameters():
        param.data = state_dict[name]
'''
# The fix, as lab 10's solution shows it: the snippet, copying into the parameters instead of rebinding them.
FIX = fixed_function(SNIPPET, "copy the new values into the parameters' memory", replace={
    "param.data = state_dict[name]": "param.data.copy_(state_dict[name])  # same addresses, new values",
})


def _model(seed: int):
    import torch

    torch_gen = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=torch_gen) * 0.3)
    return model.to(device()).requires_grad_(False)


def _forward(state, x):
    import torch

    h = torch.relu(x @ state["0.weight"].t() + state["0.bias"])
    return h @ state["2.weight"].t() + state["2.bias"]


def _run(load_weights) -> dict:
    model = _model(201)
    old = {n: p.detach().clone() for n, p in model.named_parameters()}
    new = {n: t.clone() for n, t in _model(202).state_dict().items()}
    static_x = seeded_randn(203, 4, 16, device=device())
    expect_old, expect_new = _forward(old, static_x), _forward(new, static_x)
    graph, out = capture(lambda: model(static_x))
    graph.replay()
    before = close(out, expect_old)
    load_weights(model, new)
    graph.replay()  # right after the update: nothing else has reused the old weights' memory
    after_new, after_old = close(out, expect_new), close(out, expect_old)
    eager_new = close(model(static_x), expect_new)
    return {"before_update_correct": before, "replay_uses_new_weights": after_new,
            "replay_uses_old_weights": after_old, "model_has_new_weights": eager_new}


def _demo(load_weights) -> None:
    r = _run(load_weights)
    print("before the update, the replay matches eager:", r["before_update_correct"])
    print("after the update, the model (run eagerly) has the new weights:", r["model_has_new_weights"])
    print("after the update, the replay uses the new weights:", r["replay_uses_new_weights"])
    print("after the update, the replay still uses the old weights:", r["replay_uses_old_weights"])


@core.check("kata 2 (weight-sync)")
def check_weight_sync(load_weights):
    """`load_weights(model, state_dict)` must update the weights where a captured graph reads them."""
    ok(callable(load_weights), "a function load_weights(model, state_dict)", type(load_weights).__name__,
       "pass the function itself")
    r = _run(load_weights)
    ok(r["model_has_new_weights"], "the model computes with the new weights after load_weights()",
       "the model (run eagerly) still gives the old weights' result",
       "copy every tensor of state_dict into the parameter of the same name")
    if r["replay_uses_old_weights"]:
        fail("the graph's replay computes with the new weights", "the replay still computes with the old weights",
             "assigning param.data = new_tensor points the parameter at new memory; the graph baked the old "
             "address. Copy the values into the existing memory: param.data.copy_(new) (or "
             "model.load_state_dict(state_dict), which copies in place); otherwise re-capture after the update.")
    ok(r["replay_uses_new_weights"], "the graph's replay computes with the new weights",
       "the replay matches neither the old nor the new weights",
       "the graph reads the parameters' memory: update it in place, with copy_")


KATA = register(
    "weight-sync",
    snippet=SNIPPET,
    fix=FIX,
    entry="load_weights",
    fixed_name="load_weights_fixed",
    task="Write `load_weights_fixed(model, state_dict)`, which puts the new weights into the model so that "
         "the graphs captured before the update compute with them.",
    hint="After `param.data = t`, where does the parameter's memory live, and where does the graph read?",
    explanation=(
        "`param.data = state_dict[name]` makes the parameter point at the state dict's tensor: new memory. "
        "The graph captured before the update holds the old parameter addresses, so a replay computes with "
        "the old weights (or, once that memory is reused, with garbage) while an eager forward shows the new "
        "ones. `param.data.copy_(state_dict[name])`, or `model.load_state_dict(state_dict)` which copies in "
        "place, keeps every address and updates the values. When an update has to change addresses "
        "(a different dtype or layout), re-capture the graphs after it, as SGLang's "
        "`update_weights_from_disk(recapture_cuda_graph=True)` does."),
    checker=check_weight_sync,
    demo=_demo,
)
