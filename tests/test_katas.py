"""The failure katas: every check passes the fixed version (and other correct fixes) and fails the
broken snippet (and other wrong fixes) with the hint that names the idea; every demo shows the
symptom; the lab carries every snippet verbatim. Runs on the simulator; the demos of snippets
whose capture fails run in child processes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import graphlab_utils

REPO = Path(__file__).resolve().parents[1]
LAB = REPO / "solutions" / "10_interview_drills.ipynb"


@pytest.fixture(scope="module")
def K():
    graphlab_utils.setup(backend="sim", quiet=True)
    from graphlab_utils.drills import katas

    yield katas
    from graphlab_utils import simulator

    simulator.uninstall()


@pytest.fixture(scope="module")
def T(K):
    """torch, the device and the kata helpers, as the lab's cells see them."""
    import torch

    from graphlab_utils import recipes
    from graphlab_utils.checks.core import device

    class NS:
        pass

    ns = NS()
    ns.torch, ns.DEVICE, ns.capture, ns.cfg_batch = torch, device(), recipes.capture, K.cfg_batch
    return ns


def failed(result, *words):
    """The check failed, and each word appears in what it said."""
    assert not result.passed, result
    said = " ".join((result.expected, result.seen, result.idea))
    for word in words:
        assert word in said, f"{word!r} not in {said!r}"
    return True


# ---------------------------------------------------------------------------------------
# The catalogue and the lab
# ---------------------------------------------------------------------------------------
def test_at_least_ten_katas_each_modelled_on_a_public_report(K):
    assert len(K.KATAS) >= 10
    numbers = [k.number for k in K.KATAS.values()]
    assert numbers == list(range(1, len(numbers) + 1))
    for kata in K.KATAS.values():
        assert kata.sources, kata.key
        for source in kata.sources:
            assert source.url.startswith("https://github.com/"), source.url
            assert "/issues/" in source.url or "/pull/" in source.url, source.url
            assert source.what
        assert kata.symptom and kata.task and kata.hint and kata.explanation
        assert kata.checker is not None
        assert kata.demo is not None or kata.isolated, kata.key
    assert len({k.check_name for k in K.KATAS.values()}) == len(K.KATAS)


def test_the_required_topics_are_covered(K):
    keys = set(K.KATAS)
    assert {"kv-cache-reset", "mask-sync", "host-list", "frozen-sigma", "overwritten-output", "graph-memory",
            "rerecord-every-call", "warmup-mismatch", "unregistered-generator"} <= keys


def test_get_by_key_and_number(K):
    assert K.get(1) is K.get("kv-cache-reset") is K.get("1")
    with pytest.raises(KeyError, match="the katas are"):
        K.get("no-such-kata")


def test_catalogue_lists_every_kata(K, capsys):
    K.catalogue()
    out = capsys.readouterr().out
    for kata in K.KATAS.values():
        assert kata.key in out and kata.sources[0].label in out


def test_the_lab_carries_every_snippet_and_check():
    cells = json.loads(LAB.read_text())["cells"]
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    from graphlab_utils.drills import katas

    for kata in katas.KATAS.values():
        assert any(kata.snippet.rstrip() in src for src in code), f"snippet of {kata.key} not in the lab"
        assert any(f'katas.check("{kata.key}", {kata.fixed_name})' in src for src in code), kata.key
        assert any(kata.fixed_name in src and "### BEGIN SOLUTION" in src for src in code), kata.key


def test_each_kata_lives_in_its_own_module_with_its_fix(K):
    import importlib

    for kata in K.KATAS.values():
        module = importlib.import_module(kata.checker.__module__)
        assert module.__name__.startswith(f"graphlab_utils.drills.katas.k{kata.number:02d}_"), module.__name__
        assert module.KATA is kata and module.FIX == kata.fix and module.SNIPPET == kata.snippet
        assert kata.fix.count("### BEGIN SOLUTION") == kata.fix.count("### END SOLUTION") >= 1, kata.key
        assert kata.fixed_name in kata.fix, kata.key


def test_the_lab_is_generated_from_the_kata_files(tmp_path, capsys):
    import nbformat

    from graphlab_utils.authoring import katas_notebook

    assert katas_notebook.main(["--check"]) == 0
    assert "up to date" in capsys.readouterr().out
    nb = nbformat.read(LAB, as_version=4)
    assert "`graphlab build-lesson10`" in nb.cells[0].source and nb.cells[0].cell_type == "markdown"
    nb.cells[10].source += "\n# an edit by hand"
    edited = tmp_path / LAB.name
    nbformat.write(nb, edited)
    assert katas_notebook.main(["--check", "--solution", str(edited)]) == 1
    said = capsys.readouterr().out
    assert "cell 10" in said and "is stale: run `graphlab build-lesson10`" in said
    assert katas_notebook.main(["--check", "--solution", str(tmp_path / "missing.ipynb")]) == 1
    assert "is missing" in capsys.readouterr().out


def test_the_lab_passes_every_check():
    cells = json.loads(LAB.read_text())["cells"]
    text = "".join("".join(o.get("text", "")) for c in cells if c["cell_type"] == "code" for o in c["outputs"])
    from graphlab_utils.drills import katas

    for kata in katas.KATAS.values():
        assert f"[PASS] {kata.check_name}: check passed" in text
    assert "[HINT]" not in text


# ---------------------------------------------------------------------------------------
# Kata 1: kv-cache-reset
# ---------------------------------------------------------------------------------------
def test_kv_cache_reset(K, capsys):
    KVCache = K.get(1).broken()

    class ZeroInPlace(KVCache):
        def reset(self):
            self.keys.zero_()

    class FillSlice(KVCache):
        def reset(self):
            self.keys[:] = 0.0

    class DataSwap(KVCache):
        def reset(self):
            self.keys.data = self.keys.new_zeros(self.keys.shape)  # new memory behind the same tensor

    class NoReset(KVCache):
        def reset(self):
            pass

    assert K.check(1, ZeroInPlace).passed
    assert K.check(1, FillSlice, quiet=True).passed
    assert failed(K.check(1, KVCache, quiet=True), "request 1's keys", "zero_()")
    assert failed(K.check(1, DataSwap, quiet=True), "request 1's keys")
    assert failed(K.check(1, NoReset, quiet=True), "every slot zero")
    assert not K.check(1, ZeroInPlace(2, 2, "cpu"), quiet=True).passed  # an instance, not the class
    assert capsys.readouterr().out.startswith("[PASS] kata 1 (kv-cache-reset): check passed\n")
    K.show(1)
    assert "the graph still reads request 1's keys: True" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------
# Kata 2: weight-sync
# ---------------------------------------------------------------------------------------
def test_weight_sync(K, T, capsys):
    torch = T.torch

    def copy_data(model, state_dict):
        for name, param in model.named_parameters():
            param.data.copy_(state_dict[name])

    def load_state_dict(model, state_dict):
        model.load_state_dict(state_dict)  # copies in place

    def assign(model, state_dict):
        model.load_state_dict(state_dict, assign=True)  # new parameters: new memory

    def forgot(model, state_dict):
        pass

    def no_grad_copy(model, state_dict):
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.copy_(state_dict[name])

    for answer in (copy_data, load_state_dict, no_grad_copy):
        assert K.check("weight-sync", answer, quiet=True).passed, answer.__name__
    assert failed(K.check("weight-sync", K.get(2).broken(), quiet=True), "old weights", "copy_")
    assert failed(K.check("weight-sync", assign, quiet=True), "old weights")
    assert failed(K.check("weight-sync", forgot, quiet=True), "still gives the old weights")
    K.show("weight-sync")
    assert "the replay still uses the old weights: True" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------
# Kata 3: mask-sync (its broken capture only runs in a child process)
# ---------------------------------------------------------------------------------------
def test_mask_sync_checks(K, T):
    torch = T.torch

    def weighted(hidden, mask):
        m = mask.to(hidden.dtype)
        return (hidden * m[:, None]).sum(0) / m.sum()

    def where(hidden, mask):
        return torch.where(mask[:, None], hidden, 0.0).sum(0) / mask.sum()

    def matmul(hidden, mask):
        return (mask.to(hidden.dtype) @ hidden) / mask.sum()

    def all_rows(hidden, mask):
        return hidden.mean(0)

    def masked_select(hidden, mask):
        rows = torch.masked_select(hidden, mask[:, None]).view(-1, hidden.shape[1])
        return rows.mean(0)

    def item_count(hidden, mask):
        m = mask.to(hidden.dtype)
        return (hidden * m[:, None]).sum(0) / mask.sum().item()

    for answer in (weighted, where, matmul):
        assert K.check("mask-sync", answer, quiet=True).passed, answer.__name__
    assert failed(K.check("mask-sync", K.get(3).broken(), quiet=True), "boolean index", "did not capture")
    assert failed(K.check("mask-sync", all_rows, quiet=True), "padding rows")
    assert failed(K.check("mask-sync", masked_select, quiet=True), "host sync")
    assert failed(K.check("mask-sync", item_count, quiet=True), "host sync")
    torch.randn(4)  # nothing failed a capture in this process


def test_mask_sync_demo_fails_capture_in_a_child(K, capsys):
    K.show("mask-sync")
    out = capsys.readouterr().out
    assert "raised AcceleratorError (cudaErrorStreamCaptureInvalidated)" in out
    assert "while handling AcceleratorError (cudaErrorStreamCaptureUnsupported)" in out


# ---------------------------------------------------------------------------------------
# Kata 4: host-list
# ---------------------------------------------------------------------------------------
def test_host_list_checks(K, T):
    torch, DEVICE = T.torch, T.DEVICE
    gains = torch.tensor([1.0, 0.5, 0.25, 2.0], device=DEVICE)
    as_tensor = torch.as_tensor([1.0, 0.5, 0.25, 2.0]).to(DEVICE)

    def module_tensor(x):
        return x * gains

    def other_tensor(x):
        return x.mul(as_tensor.view(1, 4))

    def python_floats(x):  # four channel slices times constants: no tensor from data at all
        return torch.stack([x[..., i] * g for i, g in enumerate([1.0, 0.5, 0.25, 2.0])], dim=-1)

    def to_device(x):
        return x * torch.tensor([1.0, 0.5, 0.25, 2.0]).to(x.device)

    def wrong_order(x):
        return x * gains.flip(0)

    for answer in (module_tensor, other_tensor, python_floats):
        assert K.check("host-list", answer, quiet=True).passed, answer.__name__
    assert failed(K.check("host-list", K.get(4).broken(), quiet=True), "Python data", "pinned")
    assert failed(K.check("host-list", to_device, quiet=True), "Python data")
    assert failed(K.check("host-list", wrong_order, quiet=True), "in their order")


def test_host_list_demo_fails_capture_in_a_child(K, capsys):
    K.show("host-list")
    out = capsys.readouterr().out
    assert out.startswith("raised RuntimeError: Cannot copy between CPU and CUDA tensors during CUDA graph capture "
                          "unless the CPU tensor is pinned")


# ---------------------------------------------------------------------------------------
# Kata 5: frozen-sigma
# ---------------------------------------------------------------------------------------
def test_frozen_sigma(K, T, capsys):
    torch, capture = T.torch, T.capture

    def static_dt(latent, eps, sigmas):
        s_latent, s_eps = latent.clone(), eps.clone()
        dt = torch.zeros((), device=latent.device)
        graph, out = capture(lambda: s_latent + dt * s_eps)

        def step(latent, eps, i):
            s_latent.copy_(latent)
            s_eps.copy_(eps)
            dt.fill_(sigmas[i + 1] - sigmas[i])
            graph.replay()
            return out.clone()

        return step

    def two_sigmas(latent, eps, sigmas):
        s_latent, s_eps = latent.clone(), eps.clone()
        table = torch.tensor(sigmas).to(latent.device)  # the whole schedule on the device, once
        index = torch.zeros(1, dtype=torch.long, device=latent.device)
        graph, out = capture(
            lambda: s_latent + (table.index_select(0, index + 1) - table.index_select(0, index)) * s_eps)

        def step(latent, eps, i):
            s_latent.copy_(latent)
            s_eps.copy_(eps)
            index.fill_(i)
            graph.replay()
            return out.clone()

        return step

    def recapture_each_step(latent, eps, sigmas):
        def step(latent, eps, i):
            dt = sigmas[i + 1] - sigmas[i]
            graph, out = capture(lambda: latent + dt * eps)
            graph.replay()
            return out.clone()

        return step

    def item_in_graph(latent, eps, sigmas):
        s_latent, s_eps = latent.clone(), eps.clone()
        dt = torch.zeros((), device=latent.device)
        graph, out = capture(lambda: s_latent + dt.item() * s_eps)  # a sync inside the capture

        def step(latent, eps, i):
            graph.replay()
            return out.clone()

        return step

    assert K.check("frozen-sigma", static_dt, quiet=True).passed
    assert K.check("frozen-sigma", two_sigmas, quiet=True).passed
    assert failed(K.check("frozen-sigma", K.get(5).broken(), quiet=True), "value of step 0", "fill_()")
    assert failed(K.check("frozen-sigma", recapture_each_step, quiet=True), "captured 1 new graph")
    assert failed(K.check("frozen-sigma", item_in_graph, quiet=True), "refused by the check")
    torch.randn(4)  # the refused sync left this process usable
    K.show("frozen-sigma")
    assert "step 5: sigma step -0.18, the graph applied -7.60, matches eager: False" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------
# Kata 6: overwritten-output
# ---------------------------------------------------------------------------------------
def test_overwritten_output(K, T, capsys):
    torch = T.torch

    def clone_each(step, first, n_steps):
        outputs, x = [], first
        for _ in range(n_steps):
            x = step(x)
            outputs.append(x.clone())
        return torch.stack(outputs)

    def preallocated(step, first, n_steps):
        result = torch.empty(n_steps, *first.shape, device=first.device)
        x = first
        for i in range(n_steps):
            x = step(x)
            result[i].copy_(x)
        return result

    def clone_too_late(step, first, n_steps):
        outputs, x = [], first
        for _ in range(n_steps):
            x = step(x)
            outputs.append(x)
        return torch.stack(outputs).clone()

    assert K.check("overwritten-output", clone_each, quiet=True).passed
    assert K.check("overwritten-output", preallocated, quiet=True).passed
    assert failed(K.check("overwritten-output", K.get(6).broken(), quiet=True), "last step's output", "clone()")
    assert failed(K.check("overwritten-output", clone_too_late, quiet=True), "last step's output")
    K.show("overwritten-output")
    assert "every step's entry equals the last step's output: True" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------
# Kata 7: graph-memory
# ---------------------------------------------------------------------------------------
def test_graph_memory(K, T, capsys):
    torch, capture, DEVICE = T.torch, T.capture, T.DEVICE

    def shared_largest_first(layer, sizes):
        graphs, pool = {}, torch.cuda.graph_pool_handle()
        for bs in sorted(sizes, reverse=True):
            static_x = torch.zeros(bs, layer.in_features, device=DEVICE)
            graph, out = capture(lambda: layer(static_x), pool=pool)
            graphs[bs] = (graph, static_x, out)
        return graphs

    def first_graphs_pool(layer, sizes):
        graphs, pool = {}, None
        for bs in sorted(sizes, reverse=True):
            static_x = torch.zeros(bs, layer.in_features, device=DEVICE)
            graph, out = capture(lambda: layer(static_x), pool=pool)
            pool = pool or graph.pool()
            graphs[bs] = (graph, static_x, out)
        return graphs

    def new_pool_each_time(layer, sizes):
        graphs = {}
        for bs in sizes:
            static_x = torch.zeros(bs, layer.in_features, device=DEVICE)
            graph, out = capture(lambda: layer(static_x), pool=torch.cuda.graph_pool_handle())
            graphs[bs] = (graph, static_x, out)
        return graphs

    assert K.check("graph-memory", shared_largest_first, quiet=True).passed
    assert K.check("graph-memory", first_graphs_pool, quiet=True).passed
    assert failed(K.check("graph-memory", K.get(7).broken(), quiet=True), "private memory pool", "pool=")
    assert failed(K.check("graph-memory", new_pool_each_time, quiet=True), "one pool per size")
    K.show("graph-memory")
    assert "at most 0.5 of one pool per size: False" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------
# Kata 8: rerecord-every-call (a timing check: modelled on the simulator)
# ---------------------------------------------------------------------------------------
def test_rerecord_every_call(K, T, capsys):
    torch, capture = T.torch, T.capture

    class PowerOfTwo:
        def __init__(self, fn):
            self.fn, self.graphs = fn, {}

        def __call__(self, x):
            n = x.shape[0]
            b = 1 << (n - 1).bit_length()
            if b not in self.graphs:
                static_x = torch.zeros(b, x.shape[1], device=x.device)
                self.graphs[b] = (*capture(lambda: self.fn(static_x)), static_x)
            graph, out, static_x = self.graphs[b]
            static_x[:n].copy_(x)
            static_x[n:].zero_()
            graph.replay()
            return out[:n].clone()

    class MultiplesOf16(PowerOfTwo):
        def __call__(self, x):
            n = x.shape[0]
            b = -(-n // 16) * 16
            if b not in self.graphs:
                static_x = torch.zeros(b, x.shape[1], device=x.device)
                self.graphs[b] = (*capture(lambda: self.fn(static_x)), static_x)
            graph, out, static_x = self.graphs[b]
            static_x[:n].copy_(x)
            graph.replay()  # stale rows past n are harmless: the model works row by row
            return out[:n].clone()

    class NoClone(PowerOfTwo):
        def __call__(self, x):
            n = x.shape[0]
            b = 1 << (n - 1).bit_length()
            if b not in self.graphs:
                static_x = torch.zeros(b, x.shape[1], device=x.device)
                self.graphs[b] = (*capture(lambda: self.fn(static_x)), static_x)
            graph, out, static_x = self.graphs[b]
            static_x[:n].copy_(x)
            graph.replay()
            return out[:n]  # a view of memory the next replay of this bucket overwrites

    assert K.check("rerecord-every-call", PowerOfTwo).passed
    assert K.check("rerecord-every-call", MultiplesOf16, quiet=True).passed
    assert failed(K.check("rerecord-every-call", K.get(8).broken(), quiet=True), "graphs captured", "bucket")
    assert failed(K.check("rerecord-every-call", NoClone, quiet=True), "differ from eager")
    capsys.readouterr()
    K.show("rerecord-every-call")
    out = capsys.readouterr().out
    assert "the graph cache is slower than eager: True" in out and "modelled" in out


# ---------------------------------------------------------------------------------------
# Kata 9: warmup-mismatch
# ---------------------------------------------------------------------------------------
def test_warmup_mismatch(K, T, capsys):
    torch, DEVICE, cfg_batch = T.torch, T.DEVICE, T.cfg_batch

    def through_cfg(runner, batch_sizes, channels, guidance, dtype):
        for bs in batch_sizes:
            runner.capture(cfg_batch(torch.zeros(bs, channels, device=DEVICE, dtype=dtype), guidance))

    def by_hand(runner, batch_sizes, channels, guidance, dtype):
        factor = 2 if guidance > 1 else 1
        for bs in sorted(batch_sizes, reverse=True):
            runner.capture(torch.randn(factor * bs, channels, device=DEVICE).to(dtype))

    def dtype_only(runner, batch_sizes, channels, guidance, dtype):
        for bs in batch_sizes:
            runner.capture(torch.zeros(bs, channels, device=DEVICE, dtype=dtype))

    def always_double(runner, batch_sizes, channels, guidance, dtype):
        for bs in batch_sizes:
            runner.capture(torch.zeros(2 * bs, channels, device=DEVICE, dtype=dtype))

    assert K.check("warmup-mismatch", through_cfg, quiet=True).passed
    assert K.check("warmup-mismatch", by_hand, quiet=True).passed
    assert failed(K.check("warmup-mismatch", K.get(9).broken(), quiet=True), "5 of 5 requests ran eagerly",
                  "cfg_batch")
    assert failed(K.check("warmup-mismatch", dtype_only, quiet=True), "1 of 5 requests ran eagerly", "[8]")
    assert failed(K.check("warmup-mismatch", always_double, quiet=True), "guidance 1")
    K.show("warmup-mismatch")
    assert "0 replayed, 5 ran eagerly" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------
# Kata 10: unregistered-generator
# ---------------------------------------------------------------------------------------
def test_unregistered_generator(K, T, capsys):
    torch = T.torch

    def registered(latent, generator):
        static = latent.clone()
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(generator)
        with torch.cuda.graph(graph):
            out = static + 0.5 * torch.randn(static.shape, generator=generator, device=static.device)

        def step(latent):
            static.copy_(latent)
            graph.replay()
            return out.clone()

        return step

    def registered_normal_(latent, generator):
        static = latent.clone()
        noise = torch.empty_like(static)
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(generator)
        with torch.cuda.graph(graph):
            out = static + noise.normal_(generator=generator) * 0.5

        def step(latent, keep=noise):  # the graph writes noise's memory: keep that tensor alive
            static.copy_(latent)
            graph.replay()
            return out.clone()

        return step

    def default_generator(latent, generator):
        static = latent.clone()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = static + 0.5 * torch.randn_like(static)  # captures, but ignores the request's seed

        def step(latent):
            static.copy_(latent)
            graph.replay()
            return out.clone()

        return step

    def predrawn(latent, generator):
        static = latent.clone()
        noise = torch.randn(static.shape, generator=generator, device=static.device)  # drawn once
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = static + 0.5 * noise

        def step(latent, keep=noise):
            static.copy_(latent)
            graph.replay()
            return out.clone()

        return step

    assert K.check("unregistered-generator", registered).passed
    assert K.check("unregistered-generator", registered_normal_, quiet=True).passed
    assert failed(K.check("unregistered-generator", K.get(10).broken(), quiet=True),
                  "Attempt to increase offset", "register_generator_state")
    assert failed(K.check("unregistered-generator", default_generator, quiet=True), "does not follow")
    assert failed(K.check("unregistered-generator", predrawn, quiet=True), "the same noise twice")
    torch.randn(4)  # the refused draw left this process usable
    capsys.readouterr()
    K.show("unregistered-generator")  # the simulator cannot show this failure: it says so
    assert capsys.readouterr().out.startswith("kata 10: real GPU only:")


# ---------------------------------------------------------------------------------------
# Kata 11: python-counter
# ---------------------------------------------------------------------------------------
def test_python_counter(K, T, capsys):
    torch = T.torch
    RunningMean = K.get(11).broken()

    class IndexCopy(RunningMean):
        def __init__(self, slots, dim, device):
            super().__init__(slots, dim, device)
            self.pos = torch.zeros((), dtype=torch.long, device=device)
            self.slot_ids = torch.arange(slots, device=device)

        def step(self, token):
            self.cache.index_copy_(0, self.pos.view(1), token.view(1, -1))
            self.pos += 1
            seen = (self.slot_ids < self.pos).to(self.cache.dtype)
            return (self.cache * seen[:, None]).sum(0) / self.pos

    class WhereWrite(RunningMean):
        """Another fix: unwritten slots are zero, so the sum over all slots is the sum so far."""

        def __init__(self, slots, dim, device):
            super().__init__(slots, dim, device)
            self.pos = torch.zeros((), dtype=torch.long, device=device)
            self.slot_ids = torch.arange(slots, device=device)

        def step(self, token):
            self.cache.copy_(torch.where((self.slot_ids == self.pos)[:, None], token, self.cache))
            self.pos.add_(1)
            return self.cache.sum(0) / self.pos

    class ReadsPosition(IndexCopy):
        def step(self, token):
            n = int(self.pos)  # a sync
            self.cache[n].copy_(token)
            self.pos += 1
            return self.cache[: n + 1].mean(0)

    assert K.check("python-counter", IndexCopy, quiet=True).passed
    assert K.check("python-counter", WhereWrite, quiet=True).passed
    assert failed(K.check("python-counter", RunningMean, quiet=True), "only the latest token", "index_copy_")
    assert failed(K.check("python-counter", ReadsPosition, quiet=True), "host sync")
    K.show("python-counter")
    assert "every replay returns just the latest token: True" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------
# Stubs and crashes become hints
# ---------------------------------------------------------------------------------------
def test_stubs_and_crashes_are_hints(K):
    def stub(*args):
        raise NotImplementedError("Exercise: write the missing code (see the hint above)")

    class StubClass:
        def __init__(self, *args):
            raise NotImplementedError("Exercise")

    for kata in K.KATAS.values():
        answer = StubClass if kata.key in ("kv-cache-reset", "rerecord-every-call", "python-counter") else stub
        result = kata.check(answer, quiet=True)
        assert not result.passed, kata.key
        assert "NotImplementedError" in result.seen or "not" in result.seen, (kata.key, result)
