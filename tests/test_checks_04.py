"""Lab 04's checks: each passes correct answers (not only the reference) and fails wrong ones
with the hint that names the idea behind the mistake."""
from __future__ import annotations

import math

import pytest

import graphlab_utils


@pytest.fixture(scope="module")
def L04():
    graphlab_utils.setup(backend="sim", quiet=True)
    from graphlab_utils.checks import lesson04

    yield lesson04
    from graphlab_utils import simulator

    simulator.uninstall()


def _capture(fn, pool=None):
    """The lab's helper: warm up on a side stream, then capture."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, pool=pool):
        out = fn()
    return g, out


def _dev():
    from graphlab_utils.checks.core import device

    return device()


# ---------------------------------------------------------------------------------------
# check_decode_step
# ---------------------------------------------------------------------------------------
def step_reference(x, pos, k_cache, v_cache, W):
    import torch

    D = k_cache.shape[1]
    q, k, v = x @ W["q"], x @ W["k"], x @ W["v"]
    k_cache.index_copy_(0, pos, k)
    v_cache.index_copy_(0, pos, v)
    scores = (q @ k_cache.T) / math.sqrt(D)
    visible = torch.arange(k_cache.shape[0], device=k_cache.device) <= pos
    scores = scores.masked_fill(~visible, float("-inf"))
    return (scores.softmax(-1) @ v_cache) @ W["o"]


def step_index_put_where(x, pos, k_cache, v_cache, W):
    """A different correct answer: index_put_ writes, torch.where mask, a hand-made softmax."""
    import torch

    k_cache[pos] = x @ W["k"]
    v_cache[pos] = x @ W["v"]
    q = x @ W["q"]
    scores = (q * k_cache).sum(-1) / k_cache.shape[1] ** 0.5  # (MAX_LEN,)
    rows = torch.arange(k_cache.shape[0], device=x.device)
    scores = torch.where(rows <= pos, scores, torch.full_like(scores, -1e9))
    p = (scores - scores.max()).exp()
    p = p / p.sum()
    return (p[:, None] * v_cache).sum(0, keepdim=True) @ W["o"]


def step_no_mask(x, pos, k_cache, v_cache, W):
    k_cache.index_copy_(0, pos, x @ W["k"])
    v_cache.index_copy_(0, pos, x @ W["v"])
    scores = (x @ W["q"]) @ k_cache.T / math.sqrt(k_cache.shape[1])
    return scores.softmax(-1) @ v_cache @ W["o"]


def step_slices_with_pos(x, pos, k_cache, v_cache, W):
    """Wrong: a slice bounded by the device position is a host sync."""
    from graphlab_utils.checks.lesson04 import attention

    k_cache[pos] = x @ W["k"]
    v_cache[pos] = x @ W["v"]
    n = int(pos) + 1
    return attention(x @ W["q"], k_cache[:n], v_cache[:n]) @ W["o"]


def step_out_of_place(x, pos, k_cache, v_cache, W):
    """Wrong: index_copy (no underscore) makes new caches; the ones passed in are never written."""
    import torch

    k_cache = k_cache.index_copy(0, pos, x @ W["k"])
    v_cache = v_cache.index_copy(0, pos, x @ W["v"])
    visible = torch.arange(k_cache.shape[0], device=x.device) <= pos
    scores = ((x @ W["q"]) @ k_cache.T / math.sqrt(k_cache.shape[1])).masked_fill(~visible, float("-inf"))
    return scores.softmax(-1) @ v_cache @ W["o"]


def step_excludes_new_token(x, pos, k_cache, v_cache, W):
    import torch

    k_cache.index_copy_(0, pos, x @ W["k"])
    v_cache.index_copy_(0, pos, x @ W["v"])
    visible = torch.arange(k_cache.shape[0], device=x.device) < pos
    scores = ((x @ W["q"]) @ k_cache.T / math.sqrt(k_cache.shape[1])).masked_fill(~visible, float("-inf"))
    return scores.softmax(-1) @ v_cache @ W["o"]


def test_decode_step_accepts_reference_and_alternative(L04):
    assert L04.check_decode_step(step_reference, quiet=True).passed
    assert L04.check_decode_step(step_index_put_where, quiet=True).passed


def test_decode_step_no_mask(L04):
    r = L04.check_decode_step(step_no_mask, quiet=True)
    assert not r.passed
    assert "all 32 rows" in r.seen and "Mask" in r.idea


def test_decode_step_sync_is_refused_without_capture(L04):
    import torch

    r = L04.check_decode_step(step_slices_with_pos, quiet=True)
    assert not r.passed
    assert "host sync" in r.seen and "did not capture" in r.idea
    torch.randn(4)  # no capture failed: the process is not poisoned


def test_decode_step_out_of_place_cache(L04):
    r = L04.check_decode_step(step_out_of_place, quiet=True)
    assert not r.passed
    assert "caches passed in are unchanged" in r.seen and "in place" in r.idea


def test_decode_step_new_token_left_out(L04):
    r = L04.check_decode_step(step_excludes_new_token, quiet=True)
    assert not r.passed and "left out" in r.seen


def test_decode_step_stub_and_wrong_shape(L04):
    def stub(x, pos, k_cache, v_cache, W):
        raise NotImplementedError("Exercise")

    assert not L04.check_decode_step(stub, quiet=True).passed
    r = L04.check_decode_step(lambda x, pos, k, v, W: step_reference(x, pos, k, v, W)[0], quiet=True)
    assert not r.passed and "shape (32,)" in r.seen


# ---------------------------------------------------------------------------------------
# check_moved_buffers
# ---------------------------------------------------------------------------------------
def moved_reference(obj, action):
    import torch

    before = {n: t.data_ptr() for n, t in vars(obj).items() if isinstance(t, torch.Tensor)}
    action()
    after = {n: t.data_ptr() for n, t in vars(obj).items() if isinstance(t, torch.Tensor)}
    return [n for n in before if n in after and after[n] != before[n]]


def moved_by_storage(obj, action):
    """A different correct answer: storage base addresses, a set, obj.__dict__."""
    import torch

    def snap():
        return {n: t.untyped_storage().data_ptr() for n, t in obj.__dict__.items() if torch.is_tensor(t)}

    before = snap()
    action()
    after = snap()
    return {n for n, p in before.items() if after.get(n, p) != p}


def moved_by_value(obj, action):
    """Wrong: compares contents, not addresses."""
    import torch

    before = {n: t.clone() for n, t in vars(obj).items() if isinstance(t, torch.Tensor)}
    action()
    return [n for n, t in before.items()
            if getattr(obj, n).shape != t.shape or not torch.equal(getattr(obj, n), t)]


def moved_by_identity(obj, action):
    """Wrong: compares Python objects, not addresses."""
    import torch

    before = {n: t for n, t in vars(obj).items() if isinstance(t, torch.Tensor)}
    action()
    return [n for n, t in before.items() if getattr(obj, n) is not t]


def moved_everything(obj, action):
    """Wrong: every attribute that changed, tensors (by address) or not."""
    def snap():
        return {n: v.data_ptr() if hasattr(v, "data_ptr") else v for n, v in vars(obj).items()}

    before = snap()
    action()
    after = snap()
    return [n for n, v in before.items() if after[n] != v]


def test_moved_buffers_accepts_reference_and_alternative(L04):
    assert L04.check_moved_buffers(moved_reference, quiet=True).passed
    assert L04.check_moved_buffers(moved_by_storage, quiet=True).passed


def test_moved_buffers_values_are_not_addresses(L04):
    r = L04.check_moved_buffers(moved_by_value, quiet=True)
    assert not r.passed and "written in place" in r.seen and "compare addresses, not values" in r.idea


def test_moved_buffers_objects_are_not_addresses(L04):
    r = L04.check_moved_buffers(moved_by_identity, quiet=True)
    assert not r.passed and "t.data = new" in r.idea


def test_moved_buffers_only_tensors(L04):
    r = L04.check_moved_buffers(moved_everything, quiet=True)
    assert not r.passed and "isinstance" in r.idea


def test_moved_buffers_calls_action_once_and_returns_names(L04):
    def twice(obj, action):
        action()
        action()
        return []

    r = L04.check_moved_buffers(twice, quiet=True)
    assert not r.passed and "2 times" in r.seen
    r = L04.check_moved_buffers(lambda obj, action: action(), quiet=True)
    assert not r.passed and "NoneType" in r.seen


# ---------------------------------------------------------------------------------------
# check_decoder
# ---------------------------------------------------------------------------------------
def _make_decoder_classes():
    import torch

    from graphlab_utils.checks.lesson04 import D, MAX_LEN

    dev = _dev()

    class Decoder:
        """The reference: buffers allocated once, the step captured in __init__."""

        def __init__(self, W):
            self.W = W
            self.x = torch.zeros(1, D, device=dev)
            self.pos = torch.zeros(1, dtype=torch.long, device=dev)
            self.k_cache = torch.zeros(MAX_LEN, D, device=dev)
            self.v_cache = torch.zeros(MAX_LEN, D, device=dev)
            self.graph, self.out = _capture(
                lambda: step_reference(self.x, self.pos, self.k_cache, self.v_cache, self.W))

        def prefill(self, prompt):
            n = prompt.shape[0]
            self.k_cache[:n].copy_(prompt @ self.W["k"])
            self.v_cache[:n].copy_(prompt @ self.W["v"])
            self.pos.fill_(n)

        def step(self, x):
            self.x.copy_(x)
            self.graph.replay()
            self.pos += 1
            return self.out.clone()

    class LazyDictDecoder:
        """A different correct answer: buffers in a dict, capture on the first step, and the
        graph advances the position itself."""

        def __init__(self, W):
            self.W = W
            self.buf = {"x": torch.zeros(1, D, device=dev),
                        "pos": torch.zeros(1, dtype=torch.long, device=dev),
                        "k": torch.zeros(MAX_LEN, D, device=dev),
                        "v": torch.zeros(MAX_LEN, D, device=dev)}
            self.graph = None

        def _body(self):
            b = self.buf
            out = step_index_put_where(b["x"], b["pos"], b["k"], b["v"], self.W)
            b["pos"].add_(1)
            return out

        def prefill(self, prompt):
            n = prompt.shape[0]
            rows = torch.arange(n, device=dev)
            self.buf["k"].index_copy_(0, rows, prompt @ self.W["k"])
            self.buf["v"].index_copy_(0, rows, prompt @ self.W["v"])
            self.buf["pos"].fill_(n)

        def step(self, x):
            self.buf["x"].copy_(x)
            if self.graph is None:
                saved = (self.buf["k"].clone(), self.buf["v"].clone(), self.buf["pos"].clone())
                self.graph, self.out = _capture(self._body)  # the warm-up runs write the caches...
                for t, s in zip((self.buf["k"], self.buf["v"], self.buf["pos"]), saved):
                    t.copy_(s)  # ...so put the request's state back
            self.graph.replay()
            return self.out.clone()

    class DictDecoder:
        """A different correct answer: buffers in a dict, and the graph advances the position itself."""

        def __init__(self, W):
            self.W = W
            self.buf = {"x": torch.zeros(1, D, device=dev),
                        "pos": torch.zeros(1, dtype=torch.long, device=dev),
                        "k": torch.zeros(MAX_LEN, D, device=dev),
                        "v": torch.zeros(MAX_LEN, D, device=dev)}
            self.graph, self.out = _capture(self._body)

        def _body(self):
            b = self.buf
            out = step_reference(b["x"], b["pos"], b["k"], b["v"], self.W)
            b["pos"].add_(1)
            return out

        def prefill(self, prompt):
            n = prompt.shape[0]
            rows = torch.arange(n, device=dev)
            self.buf["k"].index_copy_(0, rows, prompt @ self.W["k"])
            self.buf["v"].index_copy_(0, rows, prompt @ self.W["v"])
            self.buf["pos"].fill_(n)

        def step(self, x):
            self.buf["x"].copy_(x)
            self.graph.replay()
            return self.out.clone()

    def write_rows(cache, rows, start=0):
        """The planted bug of the lab: returns a NEW tensor."""
        return torch.cat([cache[:start], rows, cache[start + rows.shape[0]:]])

    class CatDecoder(Decoder):
        def prefill(self, prompt):
            self.k_cache = write_rows(self.k_cache, prompt @ self.W["k"])
            self.v_cache = write_rows(self.v_cache, prompt @ self.W["v"])
            self.pos.fill_(prompt.shape[0])

    class PosRebindDecoder(Decoder):
        def step(self, x):
            self.x.copy_(x)
            self.graph.replay()
            self.pos = self.pos + 1
            return self.out.clone()

    class NoCloneDecoder(Decoder):
        def step(self, x):
            self.x.copy_(x)
            self.graph.replay()
            self.pos += 1
            return self.out

    class RecaptureDecoder(Decoder):
        def step(self, x):
            self.x.copy_(x)
            self.graph, self.out = _capture(  # right results, but a capture per step
                lambda: step_reference(self.x, self.pos, self.k_cache, self.v_cache, self.W))
            self.graph.replay()
            self.pos += 1
            return self.out.clone()

    class NoResetDecoder(Decoder):
        def prefill(self, prompt):
            n, p = prompt.shape[0], int(self.pos)
            self.k_cache[p:p + n].copy_(prompt @ self.W["k"])
            self.v_cache[p:p + n].copy_(prompt @ self.W["v"])
            self.pos += n

    class PromptIntoCopyDecoder(Decoder):
        def prefill(self, prompt):
            n = prompt.shape[0]
            staged = self.k_cache.clone()  # written, then dropped: the graph never sees it
            staged[:n].copy_(prompt @ self.W["k"])
            self.v_cache.clone()[:n].copy_(prompt @ self.W["v"])
            self.pos.fill_(n)

    class EagerDecoder(Decoder):
        def step(self, x):
            out = step_reference(x, self.pos, self.k_cache, self.v_cache, self.W)  # right, but no graph
            self.pos += 1
            return out

    return dict(Decoder=Decoder, DictDecoder=DictDecoder, LazyDictDecoder=LazyDictDecoder, CatDecoder=CatDecoder,
                PosRebindDecoder=PosRebindDecoder, NoCloneDecoder=NoCloneDecoder,
                RecaptureDecoder=RecaptureDecoder, NoResetDecoder=NoResetDecoder,
                PromptIntoCopyDecoder=PromptIntoCopyDecoder, EagerDecoder=EagerDecoder)


@pytest.fixture(scope="module")
def decoders(L04):
    return _make_decoder_classes()


def test_decoder_accepts_reference_and_alternative(L04, decoders):
    assert L04.check_decoder(decoders["Decoder"], quiet=True).passed
    assert L04.check_decoder(decoders["DictDecoder"], quiet=True).passed


def test_decoder_with_a_syncing_step_is_stopped_before_it_breaks_the_kernel(L04, decoders):
    """A Decoder that captures a step reading pos on the CPU: the check's guard refuses the sync inside
    the capture, the hint quotes the learner's line, and random ops still work afterwards."""
    import torch

    class SyncingDecoder(decoders["Decoder"]):
        def __init__(self, W):
            self.W = W
            self.x = torch.zeros(1, L04.D, device=_dev())
            self.pos = torch.zeros(1, dtype=torch.long, device=_dev())
            self.k_cache = torch.zeros(L04.MAX_LEN, L04.D, device=_dev())
            self.v_cache = torch.zeros(L04.MAX_LEN, L04.D, device=_dev())
            self.graph, self.out = _capture(
                lambda: step_slices_with_pos(self.x, self.pos, self.k_cache, self.v_cache, self.W))

    r = L04.check_decoder(SyncingDecoder, quiet=True)
    assert not r.passed and "a host sync during capture" in r.seen and "refused by the check" in r.seen
    assert "of step_slices_with_pos(): `n = int(pos) + 1`" in r.idea
    torch.randn(3, device=_dev())  # the kernel's random generator is not left in capture mode


def test_decoder_accepts_lazy_capture(L04, decoders):
    assert L04.check_decoder(decoders["LazyDictDecoder"], quiet=True).passed


def test_decoder_stale_cache_names_attribute_and_method(L04, decoders):
    r = L04.check_decoder(decoders["CatDecoder"], quiet=True)
    assert not r.passed
    assert "prefill() replaced self.k_cache" in r.seen and "self.v_cache" in r.seen
    assert "addresses, not Python names" in r.idea


def test_decoder_stale_position(L04, decoders):
    r = L04.check_decoder(decoders["PosRebindDecoder"], quiet=True)
    assert not r.passed
    assert "step() replaced self.pos" in r.seen and "request 1, step 2" in r.seen


def test_decoder_prompt_written_elsewhere(L04, decoders):
    r = L04.check_decoder(decoders["PromptIntoCopyDecoder"], quiet=True)
    assert not r.passed and "empty (all-zero) prompt" in r.seen


def test_decoder_overwritten_output(L04, decoders):
    r = L04.check_decoder(decoders["NoCloneDecoder"], quiet=True)
    assert not r.passed and "clone()" in r.idea


def test_decoder_recapture_and_eager(L04, decoders):
    r = L04.check_decoder(decoders["RecaptureDecoder"], quiet=True)
    assert not r.passed and "captured a new graph" in r.seen
    r = L04.check_decoder(decoders["EagerDecoder"], quiet=True)
    assert not r.passed and "replayed no graph" in r.seen


def test_decoder_second_request(L04, decoders):
    r = L04.check_decoder(decoders["NoResetDecoder"], quiet=True)
    assert not r.passed and "request 1 is right" in r.seen and "fill_(n)" in r.idea


def test_decoder_not_a_class(L04):
    r = L04.check_decoder(None, quiet=True)
    assert not r.passed and r.seen == "None, an object and not a class"

    class Decoder:
        def __init__(self, W):
            self.W = W

    r = L04.check_decoder(Decoder(None), quiet=True)  # the instance, not the class
    assert r.seen == "a Decoder, an object and not a class" and "not an object made by calling it" in r.idea


def test_moved_buffers_hint_describes_the_checks_test_object(L04):
    """The learner never sees the check's object: the hint says what it holds and what action() does."""
    r = L04.check_moved_buffers(moved_by_identity, quiet=True)
    assert "tensor attributes cache, rows, pos, table, scratch" in r.expected
    assert "rebinds table to a view of itself" in r.expected and r.expected.endswith("cache and scratch")


def test_an_error_in_the_learners_code_names_its_line(L04):
    def decode_step(x, pos, k_cache, v_cache, W):
        return v_cach[pos]  # noqa: F821 - the learner's typo

    r = L04.check_decode_step(decode_step, quiet=True)
    assert r.seen == "NameError: name 'v_cach' is not defined"
    assert "of decode_step(): `return v_cach[pos]  # noqa: F821 - the learner's typo`; fix that line" in r.idea
    assert "above" not in r.idea  # nothing is printed above a check's hint


def test_a_process_damaged_by_an_earlier_capture_says_restart_the_kernel(L04):
    from graphlab_utils.errors import RNG_POISONED

    def decode_step(x, pos, k_cache, v_cache, W):
        raise RuntimeError(RNG_POISONED)  # what PyTorch raises at a random op after a failed capture

    r = L04.check_decode_step(decode_step, quiet=True)
    assert "Offset increment outside graph capture" in r.seen
    assert "an earlier capture failed in this kernel" in r.idea and "restart the kernel" in r.idea


def test_checks_print_one_line_on_success(L04, capsys):
    L04.check_moved_buffers(moved_reference)
    assert capsys.readouterr().out == "[PASS] moved buffers: check passed\n"


def test_reference_decoding_matches_masked_attention(L04):
    """The eager reference (torch.cat) and a static, masked cache agree."""
    import torch

    W = L04.make_weights(3)
    prompt, xs = L04.tokens(2, 1), L04.tokens(3, 2)
    refs = L04.decode_reference(W, prompt, xs)
    k = torch.zeros(L04.MAX_LEN, L04.D, device=_dev())
    v = torch.zeros_like(k)
    k[:2], v[:2] = prompt @ W["k"], prompt @ W["v"]
    for t in range(3):
        out = step_reference(xs[t:t + 1], torch.tensor([2 + t], device=_dev()), k, v, W)
        assert torch.allclose(out, refs[t], rtol=1e-4, atol=1e-5)

