"""graphlab_utils.training: lesson 14's data, model and graphed training step, on the simulator.

The lesson's claims rest on these: the whole step replayed over the loader equals eager
training step by step; gradients left in place, a missing warm-up and a Python float learning
rate each make it differ, from the step the lesson names; AMP with the scaler outside the
graph (or inside it, with a fused optimizer) equals eager AMP, overflow included.
"""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from graphlab_utils import training

pytestmark = pytest.mark.usefixtures("sim")

LOSS = F.cross_entropy


def device():
    from graphlab_utils import backend

    return backend.device()


def batches(n=512, seed=0, **kwargs):
    loader = training.make_loader(training.make_dataset(n=n, seed=seed), device=device())
    return training.StaticBatches(loader, device(), **kwargs)


def fresh(lr=None, step_size=3, **optimizer_args):
    model = training.make_model(device(), seed=0)
    rate = torch.tensor(0.01, device=device()) if lr is None else lr
    optimizer = torch.optim.AdamW(model.parameters(), lr=rate, **({"capturable": True} | optimizer_args))
    training.quiet_capturable(optimizer)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=0.3)
    return model, optimizer, scheduler


# ---------------------------------------------------------------------------------------
# Data and model
# ---------------------------------------------------------------------------------------
def test_dataset_is_fixed_by_its_seed():
    a, b, c = training.make_dataset(n=64, seed=1), training.make_dataset(n=64, seed=1), training.make_dataset(n=64, seed=2)
    assert torch.equal(a.tensors[0], b.tensors[0]) and torch.equal(a.tensors[1], b.tensors[1])
    assert not torch.equal(a.tensors[0], c.tensors[0])
    assert a.tensors[0].shape == (64, training.FEATURES)
    assert set(a.tensors[1].tolist()) <= set(range(training.CLASSES))


def test_loader_order_is_fixed_and_the_short_batch_dropped():
    data = training.make_dataset(n=100, seed=0)
    first = [y.tolist() for _, y in training.make_loader(data, batch_size=32, seed=5)]
    again = [y.tolist() for _, y in training.make_loader(data, batch_size=32, seed=5)]
    other = [y.tolist() for _, y in training.make_loader(data, batch_size=32, seed=6)]
    assert first == again != other
    assert len(first) == 3 and all(len(b) == 32 for b in first)


def test_static_batches_refill_the_same_tensors():
    data = training.make_dataset(n=128, seed=0)
    loader = training.make_loader(data, batch_size=32, seed=0)
    static = training.StaticBatches(loader, device())
    addresses = {static.x.data_ptr(), static.y.data_ptr()}
    seen = []
    for x, y in static:
        assert x is static.x and y is static.y
        seen.append(x.clone())
    assert {static.x.data_ptr(), static.y.data_ptr()} == addresses
    expected = [xb for xb, _ in training.make_loader(data, batch_size=32, seed=0)]
    assert len(seen) == len(static) == 4
    assert all(torch.equal(a, b) for a, b in zip(seen, expected))


def test_static_batches_spoil_the_steps_asked_for():
    plain = [x.clone() for x, _ in batches(n=256)]
    spoiled = [x.clone() for x, _ in batches(n=256, overflow_at=(2,))]
    assert torch.equal(spoiled[0], plain[0]) and torch.equal(spoiled[2], plain[2])
    assert torch.allclose(spoiled[1], plain[1] * training.OVERFLOW)


def test_static_batches_refuse_a_loader_with_a_short_last_batch():
    loader = torch.utils.data.DataLoader(training.make_dataset(n=100), batch_size=32)
    with pytest.raises(ValueError, match="drop_last=True"):
        training.StaticBatches(loader, device())


def test_model_weights_come_from_the_seed():
    a, b, c = (training.make_model(device(), seed=s) for s in (0, 0, 1))
    assert torch.equal(training.weights(a), training.weights(b))
    assert not torch.equal(training.weights(a), training.weights(c))
    assert a(torch.zeros(2, training.FEATURES, device=device())).shape == (2, training.CLASSES)


def test_make_optimizer_holds_the_rate_in_a_device_tensor():
    model = training.make_model(device())
    optimizer = training.make_optimizer(model, lr=0.02)
    group = optimizer.param_groups[0]
    assert group["capturable"] and isinstance(group["lr"], torch.Tensor)
    assert group["lr"].device == next(model.parameters()).device and float(group["lr"]) == pytest.approx(0.02)
    plain = training.make_optimizer(model, capturable=False, tensor_lr=False).param_groups[0]
    assert plain["lr"] == 0.01 and not plain["capturable"]


# ---------------------------------------------------------------------------------------
# The whole step in one graph
# ---------------------------------------------------------------------------------------
def test_graphed_training_equals_eager_step_by_step():
    model, optimizer, scheduler = fresh()
    eager = training.train_eager(model, LOSS, optimizer, batches(), scheduler)
    model, optimizer, scheduler = fresh()
    graphed = training.train_graphed(model, LOSS, optimizer, batches(), scheduler)
    same = training.same_run(eager, graphed)
    assert same == {"steps": 8, "losses equal": True, "weights equal": True, "first difference": None}
    assert int(optimizer.state[next(model.parameters())]["step"]) == 8  # the graph counts on the device


def test_gradients_left_in_place_pile_up_from_the_second_replay():
    model, optimizer, scheduler = fresh()
    eager = training.train_eager(model, LOSS, optimizer, batches(), scheduler)
    model, optimizer, scheduler = fresh()
    graphed = training.train_graphed(model, LOSS, optimizer, batches(), scheduler, set_to_none=False)
    assert training.same_run(eager, graphed)["first difference"] == 5  # warm-up 1-3, replay 4 right, 5 wrong


def test_no_warm_up_recreates_the_optimizer_state_at_every_replay():
    model, optimizer, scheduler = fresh()
    eager = training.train_eager(model, LOSS, optimizer, batches(), scheduler)
    model, optimizer, scheduler = fresh()
    cold = training.train_graphed(model, LOSS, optimizer, batches(), scheduler, warmup=0)
    assert training.same_run(eager, cold)["first difference"] == 2
    assert int(optimizer.state[next(model.parameters())]["step"]) == 1


def test_a_float_learning_rate_is_frozen_at_capture():
    model, optimizer, scheduler = fresh(lr=0.01)
    eager = training.train_eager(model, LOSS, optimizer, batches(), scheduler)
    model, optimizer, scheduler = fresh(lr=0.01)
    frozen = training.train_graphed(model, LOSS, optimizer, batches(), scheduler)
    # StepLR(step_size=3) cuts the rate after step 3, during the warm-up: the capture bakes the cut
    # rate, and the next cut (after step 6) is missed from step 7 on
    assert training.same_run(eager, frozen)["first difference"] == 7


def test_graphed_train_step_returns_the_static_loss():
    model, optimizer, _ = fresh()
    data = batches()
    stream = iter(data)
    step = training.GraphedTrainStep(model, LOSS, optimizer, data.x, data.y, itertools.islice(stream, 2))
    assert len(step.warmup_run.losses) == 2
    next(stream)
    first = step()
    next(stream)
    assert step() is first  # overwritten by each replay


def test_train_step_is_one_eager_step():
    model, optimizer, _ = fresh()
    data = batches()
    x, y = next(iter(data))
    before = training.weights(model)
    loss = training.train_step(model, LOSS, optimizer, x, y)
    assert not loss.requires_grad and loss.numel() == 1
    assert not torch.equal(before, training.weights(model))


# ---------------------------------------------------------------------------------------
# AMP
# ---------------------------------------------------------------------------------------
def _amp(graphed, capture_scaler=False, **optimizer_args):
    model = training.make_model(device(), seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, **optimizer_args)
    training.quiet_capturable(optimizer)
    scaler = torch.amp.GradScaler(device().type)
    data = batches(overflow_at=(5,))
    if graphed:
        run = training.train_graphed_amp(model, LOSS, optimizer, scaler, data, capture_scaler=capture_scaler)
    else:
        run = training.train_eager_amp(model, LOSS, optimizer, scaler, data)
    return run, scaler.get_scale()


def test_amp_with_the_scaler_outside_the_graph_equals_eager_amp():
    (eager, eager_scale), (graphed, graphed_scale) = _amp(False), _amp(True)
    assert training.same_run(eager, graphed)["weights equal"]
    assert eager_scale == graphed_scale == 2.0 ** 15  # halved once, by the overflow at step 5


def test_amp_with_a_fused_optimizer_captures_the_scaler_too():
    eager, _ = _amp(False, fused=True, capturable=True)
    whole, _ = _amp(True, capture_scaler=True, fused=True, capturable=True)
    assert training.same_run(eager, whole)["weights equal"]


# ---------------------------------------------------------------------------------------
# Comparing runs, DDP's conditions
# ---------------------------------------------------------------------------------------
def test_same_run_names_the_first_difference():
    t = torch.tensor
    a = training.Run([t(1.0), t(2.0), t(3.0)], [t([1.0]), t([2.0]), t([3.0])])
    assert training.same_run(a, a)["weights equal"]
    b = training.Run([t(1.0), t(2.0), t(3.0)], [t([1.0]), t([2.5]), t([3.0])])
    assert training.same_run(a, b) == {"steps": 3, "losses equal": True, "weights equal": False, "first difference": 2}
    shorter = training.Run(a.losses[:2], a.weights[:2])
    assert not training.same_run(a, shorter)["weights equal"]
    nan = training.Run([t(float("nan"))], [t([1.0])])
    assert training.same_run(nan, nan)["losses equal"]


def test_ddp_plan_checks_each_condition():
    plan = training.ddp_plan((2, 9, 5), env={}, built_on_side_stream=False, warmup_iterations=10)
    assert [met for _, met, _ in plan] == [False, False, False, False]
    plan = training.ddp_plan((2, 21, 5), env={"NCCL_ASYNC_ERROR_HANDLING": "0"}, built_on_side_stream=True,
                             warmup_iterations=11)
    assert all(met for _, met, _ in plan)
    assert [c for c, _, _ in plan] == [c for c, _ in training.DDP_CONDITIONS]
    assert not training.ddp_plan(None, env={})[0][1]
