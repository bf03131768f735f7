r"""PyTorch eager reference for ``cdm.bench``: the same ADM U-Net train step, timed in torch.

  python -m cdm.torch_reference --config=configs/mnist/base16.py --workdir=workdirs/bench/torch_ref
  python -m cdm.torch_reference --config=configs/mnist/base16.py:tiny --workdir=... --steps=20

Answers "how far is cdm's compiled train step from a mature eager framework on this machine?" with
one command. In one process it:

1. builds guided-diffusion's ``UNetModel`` (torch, NCHW) for the stage config, converts its
   ``state_dict`` with :func:`cdm.models.convert.convert_guided_diffusion` and checks that cdm's
   U-Net gives the same output on the same inputs (``max_abs_diff``), so both sides time the same
   network;
2. times cdm's production train step (:func:`cdm.bench.bench_train`: diffusion loss, clipping,
   Adam, EMA, compiled once) and the same step in torch eager (``q_sample`` of Ho et al. 2020
   eq. 4, the eps MSE, backward, global-norm clipping, Adam, EMA), in both torch memory formats
   (contiguous NCHW and ``channels_last``);
3. divides the model FLOPs of one step (XLA's cost analysis of cdm's lowered step, the same
   number ``cdm.bench`` reports) by each median step time and by the float32 matmul peak measured
   in the same run (``cdm.perf.measured_cpu_peak``, and torch's own matmul for comparison).

Writes ``<workdir>/torch_reference.json`` and ``torch_reference.md``. Needs ``torch`` (not a
dependency of cdm: ``pip install torch``). Only class-conditional base stages are supported. The
torch loss is the eps MSE only: with ``learn_sigma`` cdm's step also computes the variational bound
term (elementwise work on the B x H x W x C outputs, negligible next to the convolutions).
"""

from __future__ import annotations

import json
import math
import os
import time

from absl import app, flags
from ml_collections import config_flags
import numpy as np


def _define_flags():
  config_flags.DEFINE_config_file("config", None, "Base stage config file (path[:variant]).",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Output directory for torch_reference.json / .md.")
  flags.DEFINE_integer("steps", 10, "Timed train steps per framework (median reported).")
  flags.DEFINE_integer("warmup", 3, "Untimed train steps before timing.")
  flags.DEFINE_integer("threads", 0, "torch intra-op threads; 0 = os.cpu_count().")
  flags.mark_flags_as_required(["config", "workdir"])


# ---------------------------------------------------------------------- the torch ADM U-Net
def build_torch_unet(config):
  """guided-diffusion's ``UNetModel`` for a cdm base-stage config (state_dict keys as ADM's)."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  from cdm.models import convert, unet as unet_lib  # pylint: disable=g-import-not-at-top

  u = unet_lib.create_model(config)
  if u.is_super_resolution or u.num_classes is None or u.aug_level_embedding:
    raise ValueError("cdm.torch_reference supports class-conditional base stages "
                     "(use a configs/*base*.py config)")
  if not (u.use_scale_shift_norm and u.resblock_updown and u.dropout == 0.0):
    raise ValueError("cdm.torch_reference mirrors use_scale_shift_norm = resblock_updown = True, "
                     "dropout = 0")
  new_order = u.use_new_attention_order
  ch, emb_dim = u.model_channels, 4 * u.model_channels
  gn = lambda c: nn.GroupNorm(32, c, eps=1e-5)

  class ResBlock(nn.Module):
    def __init__(self, cin, cout, up=False, down=False):
      super().__init__()
      self.in_layers = nn.Sequential(gn(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
      self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * cout))
      self.out_layers = nn.Sequential(gn(cout), nn.SiLU(), nn.Dropout(0.0),
                                      nn.Conv2d(cout, cout, 3, padding=1))
      self.skip_connection = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)
      self.up, self.down = up, down

    def forward(self, x, emb):
      h = self.in_layers[1](self.in_layers[0](x))
      if self.up:
        h, x = F.interpolate(h, scale_factor=2, mode="nearest"), F.interpolate(
            x, scale_factor=2, mode="nearest")
      elif self.down:
        h, x = F.avg_pool2d(h, 2), F.avg_pool2d(x, 2)
      h = self.in_layers[2](h)
      scale, shift = self.emb_layers(emb)[:, :, None, None].chunk(2, dim=1)
      h = self.out_layers[0](h) * (1 + scale) + shift
      h = self.out_layers[3](self.out_layers[1](h))
      return self.skip_connection(x) + h

  class Attention(nn.Module):
    def __init__(self, c, heads):
      super().__init__()
      self.norm, self.heads = gn(c), heads
      self.qkv, self.proj_out = nn.Conv1d(c, 3 * c, 1), nn.Conv1d(c, c, 1)

    def forward(self, x, emb=None):
      b, c, hh, ww = x.shape
      qkv = self.qkv(self.norm(x).reshape(b, c, -1))
      d = c // self.heads
      if new_order:  # QKVAttention: rows (3, heads, d)
        q, k, v = (z.reshape(b * self.heads, d, -1) for z in qkv.chunk(3, dim=1))
      else:  # QKVAttentionLegacy: rows (heads, 3, d)
        q, k, v = qkv.reshape(b * self.heads, 3 * d, -1).chunk(3, dim=1)
      w = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(d), dim=-1)
      a = torch.einsum("bts,bcs->bct", w, v).reshape(b, c, -1)
      return x + self.proj_out(a).reshape(b, c, hh, ww)

  class Seq(nn.ModuleList):
    def forward(self, x, emb):
      for m in self:
        x = m(x, emb) if isinstance(m, (ResBlock, Attention)) else m(x)
      return x

  widths, attn_ds = u.level_channels(), u.attention_ds(warn=False)
  heads = lambda c, dec: convert._attention_heads(u, c, dec)  # pylint: disable=protected-access

  class UNet(nn.Module):
    def __init__(self):
      super().__init__()
      self.time_embed = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(),
                                      nn.Linear(emb_dim, emb_dim))
      self.label_emb = nn.Embedding(u.num_embeddings, emb_dim)
      self.input_blocks = nn.ModuleList([Seq([nn.Conv2d(u.in_channels, widths[0], 3, padding=1)])])
      chans, c, ds = [widths[0]], widths[0], 1
      for level, w in enumerate(widths):
        for _ in range(u.num_res_blocks):
          blocks = [ResBlock(c, w)]
          c = w
          if ds in attn_ds:
            blocks.append(Attention(c, heads(c, False)))
          self.input_blocks.append(Seq(blocks))
          chans.append(c)
        if level != len(widths) - 1:
          self.input_blocks.append(Seq([ResBlock(c, c, down=True)]))
          chans.append(c)
          ds *= 2
      self.middle_block = Seq([ResBlock(c, c), Attention(c, heads(c, False)), ResBlock(c, c)])
      self.output_blocks = nn.ModuleList()
      for level in reversed(range(len(widths))):
        for i in range(u.num_res_blocks + 1):
          blocks = [ResBlock(c + chans.pop(), widths[level])]
          c = widths[level]
          if ds in attn_ds:
            blocks.append(Attention(c, heads(c, True)))
          if level and i == u.num_res_blocks:
            blocks.append(ResBlock(c, c, up=True))
            ds //= 2
          self.output_blocks.append(Seq(blocks))
      self.out = nn.Sequential(gn(c), nn.SiLU(), nn.Conv2d(c, u.out_channels, 3, padding=1))

    def forward(self, x, t, y):
      half = ch // 2
      freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
      args = t.float()[:, None] * freqs[None]
      temb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
      emb = self.time_embed(temb) + self.label_emb(y)
      hs, h = [], x
      for block in self.input_blocks:
        h = block(h, emb)
        hs.append(h)
      h = self.middle_block(h, emb)
      for block in self.output_blocks:
        h = block(torch.cat([h, hs.pop()], dim=1), emb)
      return self.out(h)

  torch.manual_seed(0)
  model = UNet()
  with torch.no_grad():  # non-trivial weights everywhere (ADM zero-inits the output convs)
    for p in model.parameters():
      p.add_(0.02 * torch.randn_like(p))
  return model


def check_same_network(config, torch_model, batch: int = 2) -> float:
  """Max |cdm(x) - torch(x)| on random inputs, with the torch weights converted to cdm params."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from cdm.models import convert, unet as unet_lib  # pylint: disable=g-import-not-at-top
  sd = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
  params = convert.convert_guided_diffusion(sd, config)
  rng = np.random.default_rng(0)
  s, c = config.data.image_size, config.data.channels
  x = rng.standard_normal((batch, s, s, c)).astype(np.float32)
  t = rng.uniform(0, 999, batch).astype(np.float32)
  y = rng.integers(0, config.data.num_classes, batch).astype(np.int32)
  ours = unet_lib.create_model(config).apply({"params": params}, jnp.asarray(x), jnp.asarray(t),
                                             y=jnp.asarray(y))
  with torch.no_grad():
    ref = torch_model(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(t),
                      torch.from_numpy(y).long()).numpy().transpose(0, 2, 3, 1)
  return float(np.max(np.abs(np.asarray(ours) - ref)))


# ---------------------------------------------------------------------- timing
def time_torch_train(config, torch_model, *, steps: int, warmup: int,
                     channels_last: bool) -> dict:
  """Median time of one eager train step: q_sample, eps MSE, backward, clip, Adam, EMA."""
  import copy  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from cdm import bench  # pylint: disable=g-import-not-at-top
  from cdm.diffusion import gaussian  # pylint: disable=g-import-not-at-top

  model = copy.deepcopy(torch_model).train()
  fmt = torch.channels_last if channels_last else torch.contiguous_format
  model = model.to(memory_format=fmt)
  tc = config.train
  opt = torch.optim.Adam(model.parameters(), lr=tc.learning_rate, betas=(tc.beta1, tc.beta2))
  ema = [p.detach().clone() for p in model.parameters()]
  abar = torch.from_numpy(np.array(
      gaussian.create_diffusion(config.diffusion).alphas_cumprod, np.float32))
  b, s, c = tc.batch_size, config.data.image_size, config.data.channels
  gen = torch.Generator().manual_seed(0)
  x0 = (torch.rand(b, c, s, s, generator=gen) * 2 - 1).contiguous(memory_format=fmt)
  y = torch.randint(0, config.data.num_classes, (b,), generator=gen)

  def step():
    t = torch.randint(0, len(abar), (b,), generator=gen)
    eps = torch.randn(x0.shape, generator=gen).contiguous(memory_format=fmt)
    a = abar[t][:, None, None, None]
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    loss = torch.mean((model(x_t, t.float(), y)[:, :c] - eps) ** 2)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if tc.grad_clip_norm:
      torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip_norm)
    opt.step()
    with torch.no_grad():
      params = [p.detach() for p in model.parameters()]
      torch._foreach_mul_(ema, tc.ema_decay)  # pylint: disable=protected-access
      torch._foreach_add_(ema, params, alpha=1 - tc.ema_decay)  # pylint: disable=protected-access
    return loss

  for _ in range(max(warmup, 1)):
    step()
  step_s, times = bench._median_time(step, steps)  # pylint: disable=protected-access
  return {"step_s": step_s, "step_times_s": times,
          "memory_format": "channels_last" if channels_last else "contiguous"}


def torch_matmul_peak(n: int = 2048, repeats: int = 5) -> float:
  """Best float32 n x n matmul FLOP/s through torch (its BLAS), for comparison with XLA's."""
  import torch  # pylint: disable=g-import-not-at-top
  a = torch.ones(n, n)
  a @ a
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    a @ a
    best = min(best, time.perf_counter() - t0)
  return 2.0 * n ** 3 / best


def run(config, *, steps: int = 10, warmup: int = 3, threads: int = 0) -> dict:
  """Parity check + cdm step + torch eager steps; returns every number (see the module doc)."""
  import torch  # pylint: disable=g-import-not-at-top
  from cdm import bench  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(threads or os.cpu_count() or 1)
  torch_model = build_torch_unet(config)
  diff = check_same_network(config, torch_model)
  peak = bench.peak_flops()
  cdm_train = bench.bench_train(config, steps=steps, warmup=warmup, peak=peak["peak_flops"])
  flops = cdm_train["flops_per_step"]
  rows = []
  for channels_last in (False, True):
    r = time_torch_train(config, torch_model, steps=steps, warmup=warmup,
                         channels_last=channels_last)
    r["achieved_flops"] = flops / r["step_s"]
    r["mfu"] = r["achieved_flops"] / peak["peak_flops"]
    rows.append(r)
  return {"max_abs_diff": diff, "torch_version": torch.__version__,
          "torch_threads": torch.get_num_threads(), "peak": peak,
          "torch_matmul_flops": torch_matmul_peak(), "flops_per_step": flops,
          "batch_size": int(config.train.batch_size), "cdm": cdm_train, "torch": rows,
          "load_avg": os.getloadavg()}


def to_markdown(r: dict) -> str:
  peak = r["peak"]["peak_flops"]
  lines = [f"Same network: max |cdm - torch| = {r['max_abs_diff']:.2e}; batch {r['batch_size']}; "
           f"model FLOPs per step {r['flops_per_step'] / 1e9:.2f} G; peak (jax float32 matmul) "
           f"{peak / 1e9:.1f} GFLOP/s, torch matmul {r['torch_matmul_flops'] / 1e9:.1f}; "
           f"torch {r['torch_version']}, {r['torch_threads']} threads; load {r['load_avg']}.", "",
           "| step | ms (median) | GFLOP/s | MFU |", "|---|---|---|---|"]
  c = r["cdm"]
  lines.append(f"| cdm (jax, compiled) | {c['step_s'] * 1e3:.1f} (pipelined "
               f"{c['pipelined_step_s'] * 1e3:.1f}) | {c['achieved_flops'] / 1e9:.1f} | "
               f"{c['mfu']:.3f} |")
  for t in r["torch"]:
    lines.append(f"| torch eager, {t['memory_format']} | {t['step_s'] * 1e3:.1f} | "
                 f"{t['achieved_flops'] / 1e9:.1f} | {t['mfu']:.3f} |")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  f = flags.FLAGS
  result = run(f.config, steps=f.steps, warmup=f.warmup, threads=f.threads)
  os.makedirs(f.workdir, exist_ok=True)
  with open(os.path.join(f.workdir, "torch_reference.json"), "w") as fh:
    json.dump(result, fh, indent=1, default=float)
  md = to_markdown(result)
  with open(os.path.join(f.workdir, "torch_reference.md"), "w") as fh:
    fh.write(md)
  print(md)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
