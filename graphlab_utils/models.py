"""The capstone's model: a small text-conditioned UNet and a DDIM sampler, written for CUDA graphs.

Lesson 09, its lab and ``benchmarks/diffusion.py`` share this module, so the notebook, the
checks and the GPU benchmark run identical code. Nothing is downloaded: every weight is
drawn from a fixed seed on the CPU and then moved to the device, so both backends hold the
same numbers.

The pieces, in the order a request meets them:

* :class:`UNetConfig` and :func:`config_for`: the sizes. On a GPU the lesson uses 64
  channels, 32x32 latents and 50 steps; on the simulator (a CPU that pays Python overhead
  for every op) 32 channels, 16x16 latents and 10 steps. The code is the same.
* :class:`TinyUNet`: ``unet(x, t, context) -> eps``. A sinusoidal timestep embedding
  computed from a timestep **tensor**, residual blocks with group norm, one attention block
  (self-attention and cross-attention to the prompt embedding through
  ``F.scaled_dot_product_attention``) at the lowest resolution and in the middle,
  down- and up-sampling with skip connections. About 300 aten ops per call at 64 channels
  (:func:`count_ops`): enough kernels that at batch 1 a GPU waits for the CPU to launch them.
  Arguments are positional tensors only, as ``torch.cuda.make_graphed_callables`` wants.
* :class:`DDIMSchedule`: the scheduler's numbers precomputed once as **device tables**
  (``alphas_cumprod``, ``timesteps``, ``coef_x``, ``coef_eps``) that a step reads with
  ``index_select`` at a step-index **tensor**; the same numbers as Python floats
  (``*_host``) only for the lesson's trap.
* :func:`denoise_step`: one DDIM step (eta = 0) with classifier-free guidance run as one
  batch of ``2B`` (unconditional and conditional halves). Every per-step number comes from
  a device tensor, so a captured step stays right for every step and every request.
* :func:`denoise_step_baked`: the same step written with Python floats (the timestep and the
  two coefficients): correct eagerly, frozen at the warm-up's step once captured.
* :func:`sample`: the eager reference sampler; :func:`make_request` and
  :func:`null_context`: deterministic latents and prompt embeddings.
* :class:`StepGraph` (one graph per denoising step, replayed ``steps`` times) and
  :class:`LoopGraph` (the whole loop in one graph): graphed samplers with static buffers, fed
  by ``copy_``; :class:`Signature` and :class:`DiffusionGraphRunner`, an SGLang-style runner
  keyed by (batch, resolution, guidance, dtype) with an eager fallback, a miss counter and
  an LRU bound on the number of graphs.
* :func:`relative_error`: ``max |a - b| / max |b|``, the course's measure of "equal to eager".
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "UNetConfig",
    "GPU_CONFIG",
    "SIM_CONFIG",
    "config_for",
    "TinyUNet",
    "build_unet",
    "DDIMSchedule",
    "denoise_step",
    "denoise_step_baked",
    "make_request",
    "null_context",
    "guidance_context",
    "sample",
    "sample_baked",
    "StepGraph",
    "LoopGraph",
    "Signature",
    "DiffusionGraphRunner",
    "relative_error",
    "count_ops",
    "side_stream_warm_up",
]

MODEL_SEED = 1234  # the weights
NULL_SEED = 4321  # the "empty prompt" embedding used by the unconditional branch
TRAIN_STEPS = 1000  # the diffusion process the schedule discretises (Stable Diffusion's)
GUIDANCE = 7.5  # the default guidance scale


# ---------------------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UNetConfig:
    """The sizes of the model and of the sampling it serves."""

    channels: int = 64  # width of the first level; the lower levels have 2x
    mults: tuple = (1, 2, 2)  # channel multiplier per resolution level
    blocks: int = 2  # residual blocks per level on the way down (one more on the way up)
    latent_channels: int = 4
    context_len: int = 8  # tokens of the prompt embedding
    context_dim: int = 64  # width of a prompt-embedding token
    heads: int = 4
    groups: int = 8  # group norm groups
    size: int = 32  # latent height = width
    steps: int = 50  # denoising steps per image
    name: str = "gpu"

    @property
    def latent_shape(self) -> tuple:
        return (self.latent_channels, self.size, self.size)


GPU_CONFIG = UNetConfig()
SIM_CONFIG = UNetConfig(channels=32, context_dim=32, size=16, steps=10, name="sim")


def config_for(backend: Any) -> UNetConfig:
    """The lesson's sizes for a backend: ``"real"``/``"sim"``, or a ``gl.setup()`` session."""
    name = getattr(backend, "backend", backend)
    if name not in ("real", "sim"):
        raise ValueError(f"backend must be 'real' or 'sim', not {name!r}")
    return GPU_CONFIG if name == "real" else SIM_CONFIG


# ---------------------------------------------------------------------------------------
# The UNet
# ---------------------------------------------------------------------------------------
def timestep_embedding(t: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Sinusoidal embedding of a timestep tensor ``t`` of shape (N,): (N, 2 * len(freqs)).

    ``t`` is a tensor on purpose: a Python number here would be baked into a captured graph.
    """
    args = t[:, None].float() * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    """GroupNorm, SiLU, conv; plus the time embedding; GroupNorm, SiLU, conv; plus the skip."""

    def __init__(self, c_in: int, c_out: int, temb_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.temb = nn.Linear(temb_dim, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(temb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over the pixels, then cross-attention to the prompt embedding."""

    def __init__(self, channels: int, context_dim: int, heads: int, groups: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        self.norm_cross = nn.LayerNorm(channels)
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(context_dim, 2 * channels)
        self.proj_cross = nn.Linear(channels, channels)

    def _split(self, t: torch.Tensor) -> torch.Tensor:  # (B, L, C) -> (B, heads, L, C / heads)
        b, n, c = t.shape
        return t.view(b, n, self.heads, c // self.heads).transpose(1, 2)

    def _merge(self, t: torch.Tensor) -> torch.Tensor:  # (B, heads, L, d) -> (B, L, heads * d)
        b, h, n, d = t.shape
        return t.transpose(1, 2).reshape(b, n, h * d)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        h = self.norm(x).flatten(2).transpose(1, 2)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        a = F.scaled_dot_product_attention(self._split(q), self._split(k), self._split(v))
        tokens = tokens + self.proj(self._merge(a))
        q = self.q(self.norm_cross(tokens))
        k, v = self.kv(context).chunk(2, dim=-1)
        a = F.scaled_dot_product_attention(self._split(q), self._split(k), self._split(v))
        tokens = tokens + self.proj_cross(self._merge(a))
        return tokens.transpose(1, 2).reshape(b, c, hgt, wid)


class TinyUNet(nn.Module):
    """``unet(x, t, context) -> eps``: the noise predicted in latents ``x`` at timesteps ``t``.

    ``x``: (N, 4, H, W) latents; ``t``: (N,) timesteps (a tensor, float or int);
    ``context``: (N, L, D) prompt embeddings. All three positional (make_graphed_callables
    takes no keyword arguments).
    """

    def __init__(self, config: UNetConfig = GPU_CONFIG):
        super().__init__()
        self.config = config
        c, g = config.channels, config.groups
        temb_dim = 4 * c
        half = c // 2
        self.register_buffer(
            "freqs", torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half), persistent=False
        )
        self.time_mlp1 = nn.Linear(c, temb_dim)
        self.time_mlp2 = nn.Linear(temb_dim, temb_dim)
        self.pooled = nn.Linear(config.context_dim, temb_dim)  # the prompt, pooled, joins the time embedding
        self.conv_in = nn.Conv2d(config.latent_channels, c, 3, padding=1)

        widths = [c * m for m in config.mults]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips = [c]
        now = c
        for level, w in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(config.blocks):
                blocks.append(ResBlock(now, w, temb_dim, g))
                now = w
                skips.append(now)
            self.down.append(blocks)
            if level < len(widths) - 1:
                self.downsample.append(nn.Conv2d(now, now, 3, stride=2, padding=1))
                skips.append(now)
        self.attn_down = AttentionBlock(now, config.context_dim, config.heads, g)
        self.mid1 = ResBlock(now, now, temb_dim, g)
        self.mid_attn = AttentionBlock(now, config.context_dim, config.heads, g)
        self.mid2 = ResBlock(now, now, temb_dim, g)

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level, w in reversed(list(enumerate(widths))):
            blocks = nn.ModuleList()
            for _ in range(config.blocks + 1):
                blocks.append(ResBlock(now + skips.pop(), w, temb_dim, g))
                now = w
            self.up.append(blocks)
            if level > 0:
                self.upsample.append(nn.Conv2d(now, now, 3, padding=1))
        self.attn_up = AttentionBlock(widths[-1], config.context_dim, config.heads, g)
        self.norm_out = nn.GroupNorm(g, now)
        self.conv_out = nn.Conv2d(now, config.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        temb = self.time_mlp2(F.silu(self.time_mlp1(timestep_embedding(t, self.freqs))))
        temb = F.silu(temb + self.pooled(context.mean(dim=1)))  # every block uses silu(temb)

        h = self.conv_in(x)
        hs = [h]
        for level, blocks in enumerate(self.down):
            for block in blocks:
                h = block(h, temb)
                hs.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)
                hs.append(h)
        h = self.attn_down(h, context)
        h = self.mid2(self.mid_attn(self.mid1(h, temb), context), temb)
        for i, blocks in enumerate(self.up):
            for block in blocks:
                h = block(torch.cat([h, hs.pop()], dim=1), temb)
            if i == 0:
                h = self.attn_up(h, context)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


def build_unet(config: UNetConfig = GPU_CONFIG, device: Any = "cpu", dtype: torch.dtype = torch.float32) -> TinyUNet:
    """The UNet with its fixed random weights (seed :data:`MODEL_SEED`), for inference.

    Weights are drawn on the CPU and then moved, so every backend holds the same numbers.
    The output convolution is scaled so that the predicted noise has about unit size.
    """
    cpu_rng = torch.random.fork_rng(devices=[])
    with cpu_rng:
        torch.manual_seed(MODEL_SEED)
        model = TinyUNet(config)
        with torch.no_grad():
            model.conv_out.weight.mul_(_OUT_SCALE)
            model.conv_out.bias.zero_()
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


_OUT_SCALE = 4.0


# ---------------------------------------------------------------------------------------
# The schedule
# ---------------------------------------------------------------------------------------
class DDIMSchedule:
    """DDIM (eta = 0) over Stable Diffusion's "scaled linear" noise schedule, as device tables.

    One step ``i`` (0 = the noisiest) maps latents ``x`` and predicted noise ``eps`` to

        x_prev = coef_x[i] * x + coef_eps[i] * eps

    with ``coef_x = sqrt(a_prev / a)`` and
    ``coef_eps = sqrt(1 - a_prev) - sqrt(a_prev) * sqrt(1 - a) / sqrt(a)``, where
    ``a = alphas_cumprod[timesteps[i]]`` and ``a_prev`` the same one step later (1 after the
    last step). Tables: ``alphas_cumprod`` (TRAIN_STEPS,), ``timesteps``, ``coef_x``,
    ``coef_eps`` (steps,) float32 on ``device``; ``step_index[i]`` is a (1,) int64 view that
    a captured loop can index with. ``timesteps_host``, ``coef_x_host``, ``coef_eps_host``:
    the same numbers as Python floats (for the lesson's trap only).
    """

    def __init__(self, steps: int, device: Any = "cpu", train_steps: int = TRAIN_STEPS):
        if steps < 1 or steps > train_steps:
            raise ValueError(f"steps must be between 1 and {train_steps}")
        self.steps = int(steps)
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, train_steps, dtype=torch.float64) ** 2
        ac = torch.cumprod(1.0 - betas, dim=0)
        stride = train_steps // steps
        ts = [stride * (steps - 1 - i) + 1 for i in range(steps)]  # Stable Diffusion's "leading" spacing
        a = torch.stack([ac[t] for t in ts])
        a_prev = torch.cat([a[1:], torch.ones(1, dtype=torch.float64)])
        coef_x = torch.sqrt(a_prev / a)
        coef_eps = torch.sqrt(1 - a_prev) - torch.sqrt(a_prev) * torch.sqrt(1 - a) / torch.sqrt(a)
        self.timesteps_host = [float(t) for t in ts]
        self.coef_x_host = [float(v) for v in coef_x]
        self.coef_eps_host = [float(v) for v in coef_eps]
        self.alphas_cumprod = ac.float().to(device)
        self.timesteps = torch.tensor(self.timesteps_host, dtype=torch.float32).to(device)
        self.coef_x = coef_x.float().to(device)
        self.coef_eps = coef_eps.float().to(device)
        self.step_index = torch.arange(steps, dtype=torch.int64).view(steps, 1).to(device)


# ---------------------------------------------------------------------------------------
# One denoising step
# ---------------------------------------------------------------------------------------
def denoise_step(unet, sched: DDIMSchedule, x, step, context, guidance=None):
    """One DDIM step at step index ``step`` (an int64 tensor of shape (1,)); every number a tensor.

    ``x``: (B, 4, H, W). With guidance (``guidance``: a (1,) float tensor), ``context`` is
    (2B, L, D), the unconditional embeddings first (:func:`guidance_context`), and the UNet
    runs once on a batch of 2B; without (``guidance=None``) ``context`` is (B, L, D).
    """
    t = sched.timesteps.index_select(0, step)  # (1,): read from the device table at replay time
    if guidance is not None:
        x_in = torch.cat([x, x])
        eps_uncond, eps_cond = unet(x_in, t.expand(x_in.shape[0]), context).chunk(2)
        eps = eps_uncond + guidance * (eps_cond - eps_uncond)
    else:
        eps = unet(x, t.expand(x.shape[0]), context)
    return x * sched.coef_x.index_select(0, step) + eps * sched.coef_eps.index_select(0, step)


def denoise_step_baked(unet, sched: DDIMSchedule, x, i: int, context, guidance: float | None = None):
    """The same step written with Python numbers: the timestep and both coefficients of step ``i``.

    Eagerly it is right. In a capture, ``torch.full(..., t)`` and ``x * coef`` record the
    numbers of the step being captured as kernel arguments: every replay repeats that step.
    """
    n = x.shape[0] * (2 if guidance is not None else 1)
    t = torch.full((n,), sched.timesteps_host[i], device=x.device)
    if guidance is not None:
        eps_uncond, eps_cond = unet(torch.cat([x, x]), t, context).chunk(2)
        eps = eps_uncond + guidance * (eps_cond - eps_uncond)
    else:
        eps = unet(x, t, context)
    return x * sched.coef_x_host[i] + eps * sched.coef_eps_host[i]


# ---------------------------------------------------------------------------------------
# Requests and the eager reference
# ---------------------------------------------------------------------------------------
def make_request(seed: int, batch: int = 1, config: UNetConfig = GPU_CONFIG, device: Any = "cpu",
                 dtype: torch.dtype = torch.float32, size: int | None = None):
    """``(latents, prompt)``: initial noise (batch, 4, size, size) and a random "prompt embedding"
    (batch, L, D), drawn on the CPU from ``seed`` and moved, the same on every backend."""
    gen = torch.Generator().manual_seed(int(seed))
    size = config.size if size is None else int(size)
    latents = torch.randn(batch, config.latent_channels, size, size, generator=gen)
    prompt = torch.randn(batch, config.context_len, config.context_dim, generator=gen)
    return latents.to(device=device, dtype=dtype), prompt.to(device=device, dtype=dtype)


def null_context(batch: int = 1, config: UNetConfig = GPU_CONFIG, device: Any = "cpu", dtype: torch.dtype = torch.float32):
    """The unconditional ("empty prompt") embedding, repeated for a batch: (batch, L, D)."""
    gen = torch.Generator().manual_seed(NULL_SEED)
    one = torch.randn(1, config.context_len, config.context_dim, generator=gen)
    return one.expand(batch, -1, -1).contiguous().to(device=device, dtype=dtype)


def guidance_context(prompt: torch.Tensor, config: UNetConfig | None = None) -> torch.Tensor:
    """(2B, L, D): the unconditional embeddings, then the prompt's: the batch guidance runs on."""
    cfg = config or _config_of_context(prompt)
    uncond = null_context(prompt.shape[0], cfg, prompt.device, prompt.dtype)
    return torch.cat([uncond, prompt])


def _config_of_context(prompt: torch.Tensor) -> UNetConfig:
    return UNetConfig(context_len=prompt.shape[1], context_dim=prompt.shape[2])


def _guidance_tensor(guidance, device, dtype=torch.float32):
    if guidance is None:
        return None
    if isinstance(guidance, torch.Tensor):
        return guidance
    return torch.full((1,), float(guidance), device=device, dtype=dtype)


def sample(unet, sched: DDIMSchedule, latents, prompt, guidance: float | None = GUIDANCE):
    """The eager reference: every step of DDIM from ``latents``; returns the final latents."""
    with torch.no_grad():
        context = guidance_context(prompt, unet.config) if guidance is not None else prompt
        g = _guidance_tensor(guidance, latents.device, latents.dtype)
        x = latents
        for i in range(sched.steps):
            x = denoise_step(unet, sched, x, sched.step_index[i], context, g)
        return x


def sample_baked(unet, sched: DDIMSchedule, latents, prompt, guidance: float | None = GUIDANCE):
    """The eager sampler written with :func:`denoise_step_baked`: the same result as :func:`sample`."""
    with torch.no_grad():
        context = guidance_context(prompt, unet.config) if guidance is not None else prompt
        x = latents
        for i in range(sched.steps):
            x = denoise_step_baked(unet, sched, x, i, context, guidance)
        return x


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b| / max |b|`` in float64 (``b`` is the reference); ``inf`` for a shape mismatch."""
    if not isinstance(a, torch.Tensor) or a.shape != b.shape:
        return math.inf
    a64, b64 = a.detach().double(), b.detach().double()
    scale = b64.abs().max()
    return float((a64 - b64).abs().max() / scale) if float(scale) > 0 else float((a64 - b64).abs().max())


# ---------------------------------------------------------------------------------------
# Graphed samplers
# ---------------------------------------------------------------------------------------
def side_stream_warm_up(fn, iters: int = 2) -> None:
    """PyTorch's recipe before a capture: run ``fn`` a few times on a side stream."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(iters):
            fn()
    torch.cuda.current_stream().wait_stream(side)


class _Static:
    """The static buffers one graph reads: latents, prompt context, step index, guidance scale."""

    def __init__(self, unet, batch: int, size: int, guidance: bool, dtype, device):
        cfg = unet.config
        rows = 2 * batch if guidance else batch
        self.batch, self.size, self.guidance = batch, size, guidance
        self.x = torch.zeros(batch, cfg.latent_channels, size, size, device=device, dtype=dtype)
        self.context = torch.zeros(rows, cfg.context_len, cfg.context_dim, device=device, dtype=dtype)
        self.step = torch.zeros(1, dtype=torch.int64, device=device)
        self.scale = torch.full((1,), GUIDANCE, device=device, dtype=dtype) if guidance else None

    def load(self, latents, prompt, guidance) -> None:
        """Copy a request into the static buffers (the graph reads their addresses)."""
        self.x.copy_(latents)
        if self.guidance:
            self.context.copy_(guidance_context(prompt))
            self.scale.fill_(float(guidance))
        else:
            self.context.copy_(prompt)


class StepGraph:
    """One CUDA graph of one denoising step, replayed once per step.

    Before each replay the step index goes into ``static.step`` (``fill_``) and after it the
    new latents are copied back into ``static.x``. Captured on dummy (zero) inputs.
    """

    def __init__(self, unet, sched: DDIMSchedule, batch: int = 1, size: int | None = None,
                 guidance: bool = True, pool=None, warmup_iters: int = 2):
        self.unet, self.sched = unet, sched
        p = next(unet.parameters())
        self.static = _Static(unet, batch, size or unet.config.size, guidance, p.dtype, p.device)
        st = self.static

        def step():
            return denoise_step(unet, sched, st.x, st.step, st.context, st.scale)

        with torch.no_grad():
            side_stream_warm_up(step, warmup_iters)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, pool=pool):
                self.out = step()

    def __call__(self, latents, prompt, guidance: float | None = GUIDANCE):
        st = self.static
        st.load(latents, prompt, guidance)
        for i in range(self.sched.steps):
            st.step.fill_(i)
            self.graph.replay()
            st.x.copy_(self.out)
        return st.x


class LoopGraph:
    """The whole denoising loop, every step unrolled, in one CUDA graph: one replay per image.

    Each step reads its own index from ``sched.step_index[i]`` (a view of a device table that
    never changes), so the loop needs no feeding but the request's latents and prompt.
    """

    def __init__(self, unet, sched: DDIMSchedule, batch: int = 1, size: int | None = None,
                 guidance: bool = True, pool=None, warmup_iters: int = 1):
        self.unet, self.sched = unet, sched
        p = next(unet.parameters())
        self.static = _Static(unet, batch, size or unet.config.size, guidance, p.dtype, p.device)
        st = self.static

        def loop():
            x = st.x
            for i in range(sched.steps):
                x = denoise_step(unet, sched, x, sched.step_index[i], st.context, st.scale)
            return x

        with torch.no_grad():
            side_stream_warm_up(loop, warmup_iters)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, pool=pool):
                self.out = loop()

    def __call__(self, latents, prompt, guidance: float | None = GUIDANCE):
        self.static.load(latents, prompt, guidance)
        self.graph.replay()
        return self.out


# ---------------------------------------------------------------------------------------
# An SGLang-style runner
# ---------------------------------------------------------------------------------------
class Signature(NamedTuple):
    """What a graph is specialised for: any change needs another graph."""

    batch: int
    size: int
    guidance: bool
    dtype: torch.dtype


def signature_of(latents: torch.Tensor, guidance) -> Signature:
    return Signature(int(latents.shape[0]), int(latents.shape[-1]), guidance is not None, latents.dtype)


class DiffusionGraphRunner:
    """Graphs keyed by :class:`Signature`, captured at warm-up; eager on a miss.

    * ``warm_up(signatures)`` captures one :class:`StepGraph` per signature (all in one
      memory pool, the largest batch first), at most ``max_graphs`` of them: beyond that the
      least recently used graph is dropped (``evictions`` counts them).
    * ``runner(latents, prompt, guidance)`` replays the graph of the request's signature
      (``replays`` counts requests served so) or, on a miss, runs the eager sampler
      (``misses`` counts them). It returns a **clone** of the final latents: the static
      buffers are overwritten by the next request.
    """

    def __init__(self, unet, sched: DDIMSchedule, max_graphs: int = 4):
        if max_graphs < 1:
            raise ValueError("max_graphs must be at least 1")
        self.unet, self.sched, self.max_graphs = unet, sched, int(max_graphs)
        self.graphs: OrderedDict = OrderedDict()
        self.pool = torch.cuda.graph_pool_handle()
        self.replays = self.misses = self.evictions = 0

    def capture(self, sig: Signature) -> None:
        if sig in self.graphs:
            self.graphs.move_to_end(sig)
            return
        if len(self.graphs) >= self.max_graphs:
            _old, graph = self.graphs.popitem(last=False)
            graph.graph.reset()
            self.evictions += 1
        if next(self.unet.parameters()).dtype != sig.dtype:
            raise ValueError(f"the model's weights are not {sig.dtype}")
        self.graphs[sig] = StepGraph(self.unet, self.sched, sig.batch, sig.size, sig.guidance, pool=self.pool)

    def warm_up(self, signatures) -> None:
        for sig in sorted(signatures, key=lambda s: (-s.batch * s.size * s.size * (2 if s.guidance else 1))):
            self.capture(Signature(*sig))

    def can_run(self, sig: Signature) -> bool:
        return sig in self.graphs

    def __call__(self, latents, prompt, guidance: float | None = GUIDANCE):
        sig = signature_of(latents, guidance)
        if not self.can_run(sig):
            self.misses += 1
            return sample(self.unet, self.sched, latents, prompt, guidance)
        self.graphs.move_to_end(sig)
        self.replays += 1
        with torch.no_grad():
            return self.graphs[sig](latents, prompt, guidance).clone()


# ---------------------------------------------------------------------------------------
# Counting ops
# ---------------------------------------------------------------------------------------
def count_ops(fn, *args) -> dict:
    """The aten ops one call of ``fn(*args)`` dispatches, views excluded: {op name: count}.

    Views and reshapes are metadata only; every other op is (about) one kernel launch on a GPU.
    Runs the call eagerly; use it outside a capture.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    counts: dict = {}

    class _Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, a=(), kw=None):
            is_view = any(r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns)
            if not is_view:
                name = str(func.overloadpacket.__name__)
                counts[name] = counts.get(name, 0) + 1
            return func(*a, **(kw or {}))

    with torch.no_grad(), _Count():
        fn(*args)
    return counts
