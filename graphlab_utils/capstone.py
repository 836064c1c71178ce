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
  computed from a timestep **tensor** (plus a pooled projection of the prompt), residual
  blocks with group norm, attention blocks (self-attention over the pixels, then
  cross-attention to the prompt embedding, both through ``F.scaled_dot_product_attention``)
  at the two lower resolutions and in the middle, down- and up-sampling with skip
  connections. About 260 aten ops per call, views not counted (:func:`count_ops`), each at
  least one kernel on a GPU: at batch 1 the GPU waits for the CPU to launch them. Arguments
  are positional tensors only, as ``torch.cuda.make_graphed_callables`` wants.
* :class:`DDIMSchedule`: the scheduler's numbers precomputed once as **device tables**
  (``alphas_cumprod``, ``timesteps``, ``coef_x``, ``coef_eps``) that a step reads with
  ``index_select`` at a step-index **tensor**; the same numbers as Python floats
  (``*_host``) only for the lesson's trap.
* :func:`denoise_step`: one DDIM step (eta = 0) with classifier-free guidance run as one
  batch of ``2B`` (unconditional and conditional halves). Every per-step number comes from
  a device tensor, so a captured step stays right for every step and every request.
* :func:`denoise_step_baked`: the same step written with Python floats (the timestep and the
  two coefficients): correct eagerly, frozen at the warm-up's step once captured.
* :func:`sample`: the eager reference sampler; :func:`make_request`, :func:`null_context`
  and :func:`guidance_context`: deterministic latents and prompt embeddings.
* :class:`StaticBuffers`, :class:`StepGraph` (one graph of one denoising step, replayed
  once per step) and :class:`LoopGraph` (the whole loop in one graph): graphed samplers that
  read static buffers, fed by ``copy_``; :class:`Signature`: what a graph is specialised for
  (batch, resolution, guidance on/off, dtype), the key of a graph runner.
* :func:`compiled_step`, :class:`CompiledSampler`: the ``torch.compile`` variants (a real
  GPU only; :data:`COMPILE_SKIPPED` says so on the simulator).
* :func:`relative_error`: ``max |a - b| / max |b|``, the course's measure of "equal to eager";
  :func:`count_ops`: the aten ops of one call.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from graphlab_utils import backend, recipes

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
    "StaticBuffers",
    "StepGraph",
    "LoopGraph",
    "COMPILE_SKIPPED",
    "compile_available",
    "compiled_step",
    "CompiledSampler",
    "Signature",
    "signature_of",
    "relative_error",
    "count_ops",
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
    attn_levels: tuple = (1, 2)  # levels with an attention block, on the way down and up
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
    args = t[:, None].to(freqs.dtype) * freqs[None, :]
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
        self.attn_down = nn.ModuleDict()
        self.attn_up = nn.ModuleDict()
        skips = [c]
        now = c
        for level, w in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(config.blocks):
                blocks.append(ResBlock(now, w, temb_dim, g))
                now = w
                skips.append(now)
            self.down.append(blocks)
            if level in config.attn_levels:
                self.attn_down[str(level)] = AttentionBlock(now, config.context_dim, config.heads, g)
            if level < len(widths) - 1:
                self.downsample.append(nn.Conv2d(now, now, 3, stride=2, padding=1))
                skips.append(now)
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
            if level in config.attn_levels:
                self.attn_up[str(level)] = AttentionBlock(now, config.context_dim, config.heads, g)
            if level > 0:
                self.upsample.append(nn.Conv2d(now, now, 3, padding=1))
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
            if str(level) in self.attn_down:
                h = self.attn_down[str(level)](h, context)
                hs[-1] = h
            if level < len(self.downsample):
                h = self.downsample[level](h)
                hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, temb), context), temb)
        levels = len(self.up)
        for i, blocks in enumerate(self.up):
            for block in blocks:
                h = block(torch.cat([h, hs.pop()], dim=1), temb)
            if str(levels - 1 - i) in self.attn_up:
                h = self.attn_up[str(levels - 1 - i)](h, context)
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
    ``coef_eps`` (steps,) float32 on ``device``; ``step_tensors[i]``: a (1,) int64 device
    tensor holding ``i``, for loops that index the tables with a tensor. ``timesteps_host``,
    ``coef_x_host``, ``coef_eps_host``: the same numbers as Python floats (for the lesson's
    trap only).
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
        self.step_tensors = [torch.full((1,), i, dtype=torch.int64).to(device) for i in range(steps)]


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
    coef_x = sched.coef_x.index_select(0, step).to(x.dtype)  # .to(): no kernel when the dtype is the same
    coef_eps = sched.coef_eps.index_select(0, step).to(x.dtype)
    return x * coef_x + eps * coef_eps


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


_NULL: dict = {}


def null_context(like: torch.Tensor) -> torch.Tensor:
    """The unconditional ("empty prompt") embedding for a batch of prompts ``like`` (B, L, D).

    Drawn once per shape from a fixed seed, on the CPU, then moved: the same on every backend.
    """
    b, length, dim = like.shape
    key = (length, dim)
    if key not in _NULL:
        gen = torch.Generator().manual_seed(NULL_SEED)
        _NULL[key] = torch.randn(1, length, dim, generator=gen)
    return _NULL[key].expand(b, -1, -1).to(device=like.device, dtype=like.dtype)


def guidance_context(prompt: torch.Tensor) -> torch.Tensor:
    """(2B, L, D): the unconditional embeddings, then the prompt's: the batch guidance runs on."""
    return torch.cat([null_context(prompt), prompt])


def _guidance_tensor(guidance, device, dtype=torch.float32):
    if guidance is None:
        return None
    if isinstance(guidance, torch.Tensor):
        return guidance
    return torch.full((1,), float(guidance), device=device, dtype=dtype)


def sample(unet, sched: DDIMSchedule, latents, prompt, guidance: float | None = GUIDANCE):
    """The eager reference: every step of DDIM from ``latents``; returns the final latents."""
    with torch.no_grad():
        context = guidance_context(prompt) if guidance is not None else prompt
        g = _guidance_tensor(guidance, latents.device, latents.dtype)
        x = latents
        for i in range(sched.steps):
            x = denoise_step(unet, sched, x, sched.step_tensors[i], context, g)
        return x


def sample_baked(unet, sched: DDIMSchedule, latents, prompt, guidance: float | None = GUIDANCE):
    """The eager sampler written with :func:`denoise_step_baked`: the same result as :func:`sample`."""
    with torch.no_grad():
        context = guidance_context(prompt) if guidance is not None else prompt
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
class StaticBuffers:
    """The static buffers a graph of the sampler reads, allocated once and filled with dummies.

    ``x`` (batch, 4, size, size) latents; ``context`` (2 * batch or batch, L, D) prompt
    embeddings, the unconditional ones first when ``guidance``; ``step`` (1,) int64 step
    index; ``scale`` (1,) guidance scale (None without guidance). A request goes in with
    :meth:`load` (``copy_`` / ``fill_``: the addresses never change).
    """

    def __init__(self, config: UNetConfig, batch: int = 1, size: int | None = None, guidance: bool = True,
                 device: Any = "cpu", dtype: torch.dtype = torch.float32):
        size = config.size if size is None else int(size)
        rows = 2 * batch if guidance else batch
        self.config, self.batch, self.size, self.guidance = config, int(batch), size, bool(guidance)
        self.x = torch.zeros(batch, config.latent_channels, size, size, device=device, dtype=dtype)
        self.context = torch.zeros(rows, config.context_len, config.context_dim, device=device, dtype=dtype)
        self.step = torch.zeros(1, dtype=torch.int64, device=device)
        self.scale = torch.full((1,), GUIDANCE, device=device, dtype=dtype) if guidance else None

    @classmethod
    def for_model(cls, unet, batch: int = 1, size: int | None = None, guidance: bool = True) -> "StaticBuffers":
        p = next(unet.parameters())
        return cls(unet.config, batch, size, guidance, p.device, p.dtype)

    def load(self, latents, prompt, guidance: float | None = GUIDANCE) -> None:
        """Copy a request into the buffers."""
        if (guidance is not None) != self.guidance:
            raise ValueError("these buffers were made for " + ("guided" if self.guidance else "unguided") + " sampling")
        self.x.copy_(latents)
        if self.guidance:
            self.context.copy_(guidance_context(prompt))
            self.scale.fill_(float(guidance))
        else:
            self.context.copy_(prompt)


class StepGraph:
    """One CUDA graph of one denoising step, replayed once per step.

    Captured on the dummy contents of :class:`StaticBuffers`. Serving a request: copy it
    into the buffers; then, per step, ``fill_`` the step index, replay, and copy the new
    latents back into ``static.x``. Returns a clone (the buffers belong to the next request).
    """

    def __init__(self, unet, sched: DDIMSchedule, batch: int = 1, size: int | None = None,
                 guidance: bool = True, pool=None, warmup_iters: int = 2):
        self.unet, self.sched = unet, sched
        self.static = st = StaticBuffers.for_model(unet, batch, size, guidance)

        def step():
            return denoise_step(unet, sched, st.x, st.step, st.context, st.scale)

        with torch.no_grad():
            self.graph, self.out = recipes.capture(step, pool, warmup=warmup_iters)

    def __call__(self, latents, prompt, guidance: float | None = GUIDANCE):
        st = self.static
        st.load(latents, prompt, guidance)
        for i in range(self.sched.steps):
            st.step.fill_(i)
            self.graph.replay()
            st.x.copy_(self.out)
        return st.x.clone()


class LoopGraph:
    """The whole denoising loop, every step unrolled, in one CUDA graph: one replay per image.

    Step ``i`` reads its index from ``sched.step_tensors[i]``, a device tensor that never
    changes, so only the request's latents, prompt and guidance scale are fed. ``step_fn``
    replaces :func:`denoise_step` (with the same arguments), for example by a function
    compiled with ``torch.compile`` (default mode): the warm-up compiles it, the capture
    records its kernels.
    """

    def __init__(self, unet, sched: DDIMSchedule, batch: int = 1, size: int | None = None,
                 guidance: bool = True, pool=None, warmup_iters: int = 1, step_fn=None):
        self.unet, self.sched = unet, sched
        self.static = st = StaticBuffers.for_model(unet, batch, size, guidance)
        step_fn = step_fn or (lambda x, step, context, scale: denoise_step(unet, sched, x, step, context, scale))

        def loop():
            x = st.x
            for i in range(sched.steps):
                x = step_fn(x, sched.step_tensors[i], st.context, st.scale)
            return x

        with torch.no_grad():
            self.graph, self.out = recipes.capture(loop, pool, warmup=warmup_iters)

    def __call__(self, latents, prompt, guidance: float | None = GUIDANCE):
        self.static.load(latents, prompt, guidance)
        self.graph.replay()
        return self.out.clone()


# ---------------------------------------------------------------------------------------
# torch.compile variants (a real GPU only)
# ---------------------------------------------------------------------------------------
COMPILE_SKIPPED = "torch.compile variants: skipped on the simulator (they compile kernels for a real GPU)"


def compile_available() -> bool:
    """True on a real GPU; False on the simulator (torch.compile does not trace through its dispatch mode)."""
    return not backend.is_simulated() and torch.cuda.is_available()


def compiled_step(unet, sched: DDIMSchedule, mode: str | None = None):
    """``denoise_step`` for this model and schedule through ``torch.compile`` (``mode=None``: default).

    Call it as ``step(x, step_index, context, scale)``. Shapes are static (``dynamic=False``):
    each signature compiles once, on its first call.
    """
    if not compile_available():
        raise RuntimeError(COMPILE_SKIPPED)

    def step(x, step_index, context, scale):
        return denoise_step(unet, sched, x, step_index, context, scale)

    return torch.compile(step, mode=mode, dynamic=False)


class CompiledSampler:
    """The eager loop over a step compiled with ``torch.compile(mode="reduce-overhead")``.

    PyTorch records and replays CUDA graphs itself ("CUDA graph trees"), one per step call;
    each step's output is cloned before the next call, which may overwrite it.
    """

    def __init__(self, unet, sched: DDIMSchedule, mode: str = "reduce-overhead"):
        self.unet, self.sched = unet, sched
        self.step = compiled_step(unet, sched, mode)

    def __call__(self, latents, prompt, guidance: float | None = GUIDANCE):
        with torch.no_grad():
            context = guidance_context(prompt) if guidance is not None else prompt
            g = _guidance_tensor(guidance, latents.device, latents.dtype)
            x = latents
            for i in range(self.sched.steps):
                torch.compiler.cudagraph_mark_step_begin()
                x = self.step(x, self.sched.step_tensors[i], context, g).clone()
            return x


# ---------------------------------------------------------------------------------------
# Signatures
# ---------------------------------------------------------------------------------------
class Signature(NamedTuple):
    """What a graph of the sampler is specialised for: a request with another one needs another graph."""

    batch: int
    size: int
    guidance: bool
    dtype: torch.dtype = torch.float32


def signature_of(latents: torch.Tensor, guidance: float | None) -> Signature:
    """The signature of a request: its latents' batch, size and dtype, and whether it is guided."""
    return Signature(int(latents.shape[0]), int(latents.shape[-1]), guidance is not None, latents.dtype)


# ---------------------------------------------------------------------------------------
# Counting ops
# ---------------------------------------------------------------------------------------
def count_ops(fn, *args) -> dict:
    """The aten ops one call of ``fn(*args)`` dispatches, views excluded: {op name: count}.

    Views and reshapes are metadata only; every other op is (about) one kernel launch on a GPU.
    Runs the call eagerly; use it outside a capture. (The counting is :func:`graphlab_utils.watch.count_ops`.)
    """
    from graphlab_utils import watch

    return watch.count_ops(fn, *args)
