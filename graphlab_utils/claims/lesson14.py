"""Lesson 14 · a whole training step in one graph: gradients, capturable optimizers, the learning
rate, the warm-up, and AMP's grad scaler."""
from __future__ import annotations

import itertools

from graphlab_utils.claims import CUDA_ERROR, FIRST_ERROR, RAISED, claim, error_verdicts

_SAMPLES = 512  # 8 batches of 64: 3 warm-up steps and 5 replays


def _run(device, *, lr=None, set_to_none=True, warmup=3, graphed=True, step_size=3):
    """One short run of lesson 14's model: eager, or warm-up + capture + replays."""
    import torch
    import torch.nn.functional as F

    from graphlab_utils import training

    model = training.make_model(device, seed=0)
    rate = torch.tensor(0.01, device=device) if lr is None else lr
    optimizer = torch.optim.AdamW(model.parameters(), lr=rate, capturable=True)
    training.quiet_capturable(optimizer)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=0.3)
    batches = training.StaticBatches(training.make_loader(training.make_dataset(n=_SAMPLES), device=device), device)
    if graphed:
        run = training.train_graphed(model, F.cross_entropy, optimizer, batches, scheduler, warmup=warmup,
                                     set_to_none=set_to_none)
    else:
        run = training.train_eager(model, F.cross_entropy, optimizer, batches, scheduler)
    return run, optimizer, model


@claim("a whole training step (forward, loss, backward, AdamW step) replayed over a loader equals eager training", {
    "losses equal to eager at every step": True, "weights equal to eager at every step": True,
    "every .grad kept its address across the replays": True})
def whole_step_equals_eager(device):
    import torch
    import torch.nn.functional as F

    from graphlab_utils import training

    eager, _, _ = _run(device, graphed=False)
    model = training.make_model(device, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=torch.tensor(0.01, device=device), capturable=True)
    training.quiet_capturable(optimizer)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.3)
    batches = training.StaticBatches(training.make_loader(training.make_dataset(n=_SAMPLES), device=device), device)
    stream = iter(batches)
    step = training.GraphedTrainStep(model, F.cross_entropy, optimizer, batches.x, batches.y,
                                     itertools.islice(stream, 3), scheduler)
    addresses = [p.grad.data_ptr() for p in model.parameters()]  # the capture created every .grad
    run = step.warmup_run
    for _ in stream:
        run.losses.append(step().detach().clone())
        scheduler.step()
        run.weights.append(training.weights(model))
    same = training.same_run(eager, run)
    return {"losses equal to eager at every step": same["losses equal"],
            "weights equal to eager at every step": same["weights equal"],
            "every .grad kept its address across the replays": [p.grad.data_ptr() for p in model.parameters()] == addresses}


@claim("gradients left in place at the capture are added into at every replay", {
    "zero_grad(set_to_none=True) before the capture: equal to eager": True,
    "zero_grad(set_to_none=False) before the capture: equal to eager": False,
    "first step that differs (3 warm-up steps, then replays)": 5})
def gradients_pile_up(device):
    from graphlab_utils import training

    eager, _, _ = _run(device, graphed=False)
    to_none = training.same_run(eager, _run(device)[0])
    left = training.same_run(eager, _run(device, set_to_none=False)[0])
    return {"zero_grad(set_to_none=True) before the capture: equal to eager": to_none["weights equal"],
            "zero_grad(set_to_none=False) before the capture: equal to eager": left["weights equal"],
            "first step that differs (3 warm-up steps, then replays)": left["first difference"]}


@claim("PyTorch refuses to capture the step() of an AdamW built without capturable=True", {
    "AdamW(capturable=False): exception raised": "RuntimeError",
    "the message names capturable": True, "AdamW(capturable=True): captured": True}, isolated=True)
def adamw_needs_capturable(device):
    import torch
    import torch.nn.functional as F

    from graphlab_utils import training

    outcome = {}
    for capturable in (True, False):
        model = training.make_model(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, capturable=capturable)
        training.quiet_capturable(optimizer)
        batches = training.StaticBatches(training.make_loader(training.make_dataset(n=256), device=device), device)
        try:
            training.GraphedTrainStep(model, F.cross_entropy, optimizer, batches.x, batches.y,
                                      itertools.islice(iter(batches), 3))
            outcome[capturable] = None
        except RuntimeError as exc:
            outcome[capturable] = exc
    refused = outcome[False]
    return {"AdamW(capturable=False): exception raised": type(refused).__name__ if refused else None,
            "the message names capturable": refused is not None and "capturable is False" in str(refused),
            "AdamW(capturable=True): captured": outcome[True] is None}


@claim("a Python float learning rate is baked into the graph; a device tensor is read at every replay", {
    "float learning rate: equal to eager under a step schedule": False,
    "first step that differs (the schedule cuts the rate after steps 3 and 6)": 7,
    "tensor learning rate: equal to eager under a step schedule": True})
def float_learning_rate_frozen(device):
    from graphlab_utils import training

    float_eager, _, _ = _run(device, lr=0.01, graphed=False)
    frozen = training.same_run(float_eager, _run(device, lr=0.01)[0])
    tensor = training.same_run(_run(device, graphed=False)[0], _run(device)[0])
    return {"float learning rate: equal to eager under a step schedule": frozen["weights equal"],
            "first step that differs (the schedule cuts the rate after steps 3 and 6)": frozen["first difference"],
            "tensor learning rate: equal to eager under a step schedule": tensor["weights equal"]}


@claim("without a warm-up, the optimizer's state is created inside the capture and again at every replay", {
    "no warm-up: equal to eager": False, "no warm-up: first step that differs": 2,
    "no warm-up: AdamW's step count after 8 replays": 1,
    "3 warm-up steps: AdamW's step count after 3 steps and 5 replays": 8})
def optimizer_state_needs_warm_up(device):
    from graphlab_utils import training

    eager, _, _ = _run(device, graphed=False)
    cold, cold_optimizer, cold_model = _run(device, warmup=0)
    same = training.same_run(eager, cold)
    _, warm_optimizer, warm_model = _run(device)

    def count(optimizer, model):
        return int(optimizer.state[next(model.parameters())]["step"])

    return {"no warm-up: equal to eager": same["weights equal"], "no warm-up: first step that differs": same["first difference"],
            "no warm-up: AdamW's step count after 8 replays": count(cold_optimizer, cold_model),
            "3 warm-up steps: AdamW's step count after 3 steps and 5 replays": count(warm_optimizer, warm_model)}


@claim("GradScaler.step of a typical optimizer syncs: captured, it fails the capture", {
    RAISED: "AcceleratorError", CUDA_ERROR: "cudaErrorStreamCaptureInvalidated",
    FIRST_ERROR: "cudaErrorStreamCaptureUnsupported"}, isolated=True)
def grad_scaler_step_syncs(device):
    import torch
    import torch.nn.functional as F

    from graphlab_utils import training

    model = training.make_model(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler(device.type)
    batches = training.StaticBatches(training.make_loader(training.make_dataset(n=256), device=device), device)
    training.train_eager_amp(model, F.cross_entropy, optimizer, scaler, itertools.islice(batches, 3))
    g = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(g):
            training.amp_backward(model, F.cross_entropy, scaler, batches.x, batches.y)
            scaler.step(optimizer)
            scaler.update()
        return {RAISED: None}
    except Exception as exc:  # noqa: BLE001 - the error is the outcome
        return error_verdicts(exc)


@claim("AMP with the backward captured and GradScaler.step/update eager equals eager AMP, an overflow included; "
       "a fused optimizer lets them into the graph", {
           "scaler outside the graph: equal to eager AMP": True, "the scale was halved by the overflow, in both runs": True,
           "fused AdamW, scaler inside the graph: equal to eager AMP": True})
def grad_scaler_outside_the_graph(device):
    import torch
    import torch.nn.functional as F

    from graphlab_utils import training

    def amp(graphed, capture_scaler=False, **optimizer_args):
        model = training.make_model(device, seed=0)
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, **optimizer_args)
        training.quiet_capturable(optimizer)
        scaler = torch.amp.GradScaler(device.type)
        batches = training.StaticBatches(training.make_loader(training.make_dataset(n=_SAMPLES), device=device),
                                         device, overflow_at=(5,))
        if graphed:
            run = training.train_graphed_amp(model, F.cross_entropy, optimizer, scaler, batches,
                                             capture_scaler=capture_scaler)
        else:
            run = training.train_eager_amp(model, F.cross_entropy, optimizer, scaler, batches)
        return run, scaler.get_scale()

    (eager, eager_scale), (graphed, graphed_scale) = amp(False), amp(True)
    fused_eager, _ = amp(False, fused=True, capturable=True)
    fused_whole, _ = amp(True, capture_scaler=True, fused=True, capturable=True)
    return {"scaler outside the graph: equal to eager AMP": training.same_run(eager, graphed)["weights equal"],
            "the scale was halved by the overflow, in both runs": eager_scale == graphed_scale == 2.0 ** 15,
            "fused AdamW, scaler inside the graph: equal to eager AMP": training.same_run(fused_eager, fused_whole)["weights equal"]}


@claim("a data-parallel step, the gradients' all-reduce included, captured on two ranks trains as one process "
       "on the whole batches", {
           "every rank finished": True, "the ranks hold the same weights": True,
           "equal to one process on the whole batches": True}, spawns=True)
def data_parallel_step_in_one_graph(device):
    import torch
    import torch.nn.functional as F

    from graphlab_utils import multigpu, training

    ranks = multigpu.launch(training.data_parallel_training, world_size=2, timeout=120, echo=False)
    if not ranks.ok:
        return {"every rank finished": False, "the ranks hold the same weights": None,
                "equal to one process on the whole batches": None}
    (losses_0, weights_0), (losses_1, weights_1) = ranks.values
    model = training.make_model(device, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batches = training.StaticBatches(training.make_loader(training.make_dataset(n=512), device=device), device)
    one = training.train_eager(model, F.cross_entropy, optimizer, itertools.islice(batches, 8))
    same = (torch.allclose(training.weights(model), weights_0.to(device), rtol=1e-4, atol=1e-5)
            and torch.allclose(torch.stack(one.losses), ((losses_0 + losses_1) / 2).to(device), rtol=1e-4, atol=1e-5))
    return {"every rank finished": True, "the ranks hold the same weights": torch.equal(weights_0, weights_1),
            "equal to one process on the whole batches": same}
