"""Mode (c)'s network: a small equivariant recursive model of one ARC task, trained from scratch on
that task alone (`ponder.tasks.arc.solver_train`).

The state is a *multitensor*: one tensor per subset ("key") of the axes

    E (examples), C (non-background colours), D (directions), X (rows), Y (columns),

(a key with X or Y also has E; every key has one of C, D, X, Y), each with a leading channel axis,
stored channel-first in a full broadcast layout (ch, E, C, D, X, Y) with absent axes of length 1.
Mixing between keys is broadcasting (to larger keys) or masked averaging (to smaller ones), and
per-channel normalization is one fused `layer_norm`. The design follows CompressARC ("ARC-AGI
Without Pretraining", Liao and Gu), re-implemented and changed for a CPU minute per task:

- conditional (the default): the per-example keys read the given input grids (colour planes,
  background, input/output bounds); the task-level keys (C, D: no example axis) are Gaussian
  latents whose KL is charged; the heads generate the output grids.
- generative (CompressARC's): every key is a latent, and the heads generate the inputs and outputs
  of every example (test outputs unconstrained).

Inductive biases, by construction:

- equivariance to permutations of colours 1-9 and of examples: both are axes and every weight is
  shared along them (colour identities can only enter through the charged C latent);
- equivariance to transposition: a key with Y but not X uses the weights of its X twin, the
  softmaxes over the row and column axes of one key share output weights, and the direction axis
  is mixed by weights that depend only on the relative direction, symmetric under reflection;
- 2-d structure: cumulative max along 8 (or 4) directions (rays) and one-cell shifts, softmax
  selection over every subset of (C, D, X, Y), masked pooling over rows and columns.

Recursion: one `Block` (one set of weights) is applied `n_steps` times to the state; after every
application the heads read colour logits and a halting logit, so that the depth is a latent
variable of the objective (adaptive halting, PonderNet-style).
"""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Geometry", "Block", "RecursiveCompressor", "ALL_KEYS", "KEY_SETS", "key_name", "DIRECTIONS"]

AXES = "ECDXY"
DIRECTIONS = ((1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1))  # (drow, dcol)
N_DIR = len(DIRECTIONS)
GRID_KEY, PLANE_KEY = (1, 1, 0, 1, 1), (1, 0, 0, 1, 1)
SNR_SPEED = 10.0  # reparameterization: the per-channel latent level moves this much faster under Adam


def _valid(k) -> bool:
    """A key (0/1 per axis E, C, D, X, Y) is valid when grid axes come with the example axis and it
    has at least one of C, D, X, Y."""
    e, c, d, x, y = k
    return not ((x or y) and not e) and bool(c or d or x or y)


ALL_KEYS = [k for k in itertools.product((0, 1), repeat=5) if _valid(k)]


def key_name(k) -> str:
    """"ECXY" for the key (1, 1, 0, 1, 1)."""
    return "".join(a for a, b in zip(AXES, k) if b)


def _keys(names: str) -> list[tuple[int, ...]]:
    """The valid keys named in a comma-separated list ("C,D,EXY")."""
    wanted = set(names.split(","))
    return [k for k in ALL_KEYS if key_name(k) in wanted]


# named key sets (the lattice the multitensor lives on); "full" is every valid key
KEY_SETS = {
    "full": ALL_KEYS,
    "lite": _keys("C,D,EC,ED,EX,EY,EXY,ECX,ECY,ECXY,EDXY"),
    "mid": _keys("C,D,EC,ED,EX,EY,EXY,ECX,ECY,ECXY,EDXY,ECDXY"),
    "nodir": _keys("C,EC,EX,EY,EXY,ECX,ECY,ECXY"),
}


def _tied(k) -> str:
    """Weight name of a key: a key with Y but not X shares the weights of its X twin."""
    e, c, d, x, y = k
    return key_name((e, c, d, 1, 0)) if (y and not x) else key_name(k)


def _width(k) -> int:
    """Channels of a key's tensor: 8 with the direction axis (it is 8 times larger), else 16."""
    return 8 if k[2] else 16


def _softmax_groups(k) -> list[list[tuple[int, ...]]]:
    """Nonempty subsets of the key's C, D, X, Y axes (tensor dims, channel first), grouped into
    orbits of the row/column swap when the key has both (a group shares its output weights)."""
    present = [a + 1 for a in (1, 2, 3, 4) if k[a]]
    subsets = [s for r in range(1, len(present) + 1) for s in itertools.combinations(present, r)]
    if not (k[3] and k[4]):
        return [[s] for s in subsets]
    swap = {2: 2, 3: 3, 4: 5, 5: 4}
    groups, seen = [], set()
    for s in subsets:
        if s not in seen:
            t = tuple(sorted(swap[a] for a in s))
            groups.append([s] if t == s else [s, t])
            seen.update(groups[-1])
    return groups


def norm(t: torch.Tensor) -> torch.Tensor:
    """Per channel: zero mean and unit variance over every other axis."""
    return F.layer_norm(t, t.shape[1:], eps=1e-5)


def _mm(w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Channel matmul: (out, in) x (in, ...) -> (out, ...)."""
    return (w @ t.reshape(t.shape[0], -1)).view(w.shape[0], *t.shape[1:])


class Geometry:
    """Task-size constants: axis lengths, in-bounds masks of the shared canvas, ray indices."""

    def __init__(self, n_examples: int, n_colours: int, height: int, width: int, mask: torch.Tensor,
                 diagonals: bool = True):
        dirs = DIRECTIONS if diagonals else DIRECTIONS[::2]  # 8 directions, or the 4 axis-parallel ones
        self.n_dir = n_dir = len(dirs)
        self.n = (n_examples, n_colours, n_dir, height, width)
        m = mask.float().view(1, n_examples, 1, 1, height, width)  # union of input and output bounds
        self.mask = {(1, 1): m, (1, 0): m.amax(dim=5, keepdim=True), (0, 1): m.amax(dim=4, keepdim=True)}
        self.flat_mask = m.reshape(1, n_examples, 1, 1, height * width)
        length = max(height, width)
        ray = torch.empty(n_dir, height * width, length, dtype=torch.long)
        shift = torch.empty(n_dir, height * width, dtype=torch.long)
        for d, (dr, dc) in enumerate(dirs):
            for r in range(height):
                for c in range(width):
                    p = r * width + c
                    for j in range(length):  # the cells behind p along direction d (p itself past the edge)
                        rr, cc = r - j * dr, c - j * dc
                        ray[d, p, j] = rr * width + cc if 0 <= rr < height and 0 <= cc < width else p
                    rr, cc = r - dr, c - dc
                    shift[d, p] = rr * width + cc if 0 <= rr < height and 0 <= cc < width else height * width
        self.ray, self.shift, self.length = ray.view(n_dir, -1), shift, length
        self.hw = (height, width)

    def shape(self, k, ch: int) -> list[int]:
        """The broadcast shape (ch, E, C, D, X, Y) of key k's tensor with ch channels."""
        return [ch] + [n if b else 1 for n, b in zip(self.n, k)]

    def key_mask(self, k):
        """The in-bounds mask broadcastable to key k (None for keys without rows or columns)."""
        return self.mask.get((k[3], k[4]))

    def pool(self, t: torch.Tensor, k, axis: int) -> torch.Tensor:
        """Average the tensor of key k over one axis (rows and columns: in-bounds cells only)."""
        if axis in (3, 4):
            m = self.key_mask(k)
            return (t * m).sum(dim=axis + 1, keepdim=True) / (m.sum(dim=axis + 1, keepdim=True) + 1e-4)
        return t.mean(dim=axis + 1, keepdim=True)


def _linear(n_out: int, n_in: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(n_out, n_in) / math.sqrt(n_in))


class Block(nn.Module):
    """One recursion step: a parallel residual update of every tensor of the multitensor.

    From the normalized state of each key, one projection feeds five branches: lift (sum of the
    smaller keys' projections, broadcast), pool (masked average of the larger keys' projections),
    softmax selection over axis subsets, directional cummax/shift (keys with D, X and Y), and a SiLU
    MLP; keys with D also get a relative-direction mixing. One output projection per key adds the
    branches back; the result is normalized.
    """

    def __init__(self, keys, n_dir: int = N_DIR, lift: int = 16, pool: int = 8, sm: int = 2, dirc: int = 2,
                 hidden: int = 16):
        super().__init__()
        self.keys = list(keys)
        self.dims = {"lift": lift, "pool": pool, "sm": sm, "dir": 2 * dirc, "mlp": hidden}
        self.dirc = dirc
        self.w_in, self.w_out, self.mix = nn.ParameterDict(), nn.ParameterDict(), nn.ParameterDict()
        self.split = {}
        for k in self.keys:
            n, w = _tied(k), _width(k)
            parts = [("lift", lift), ("pool", pool), ("sm", sm), ("mlp", hidden)]
            if k[2] and k[3] and k[4]:
                parts.append(("dir", 2 * dirc))
            self.split[key_name(k)] = parts
            if n in self.w_in:
                continue
            n_feat = lift + pool + sm * len(_softmax_groups(k)) + hidden + (2 * dirc if k[2] and k[3] and k[4] else 0)
            self.w_in[n] = _linear(sum(p for _, p in parts), w)
            self.w_out[n] = nn.Parameter(torch.randn(w, n_feat) / math.sqrt(n_feat) * 0.5)
            if k[2]:
                self.mix[n] = nn.Parameter(torch.randn(n_dir // 2 + 1, w, w) / math.sqrt(w * n_dir))
        rel = [min(r, n_dir - r) for r in range(n_dir)]
        self.register_buffer("rel", torch.tensor([[rel[(b - a) % n_dir] for b in range(n_dir)] for a in range(n_dir)]),
                             persistent=False)
        present = set(self.keys)
        # lift: add axes E, C, D, X, Y in this order; pool: remove X, Y, E, C, D (paths stay valid)
        self.lift_edges = [(a, k) for a in (0, 1, 2, 3, 4) for k in self.keys
                           if k[a] and tuple(0 if i == a else b for i, b in enumerate(k)) in present]
        self.pool_edges = [(a, k) for a in (3, 4, 0, 1, 2) for k in self.keys
                           if not k[a] and tuple(1 if i == a else b for i, b in enumerate(k)) in present]

    def _directional(self, a: torch.Tensor, g: Geometry) -> torch.Tensor:
        """Per direction d: cumulative max over the ray behind each cell, and the cell one step behind."""
        ch, e, c, d, h, w = a.shape
        dc = self.dirc
        flat = a.reshape(ch, e, c, d, h * w)
        cm = flat[:dc] - 1e4 * (1 - g.flat_mask)
        idx = g.ray.view(1, 1, 1, d, -1).expand(dc, e, c, d, g.ray.shape[1])
        cm = torch.gather(cm, 4, idx).view(dc, e, c, d, h * w, g.length).amax(dim=5)
        sh = torch.cat([flat[dc:], flat.new_zeros(dc, e, c, d, 1)], dim=4)
        sh = torch.gather(sh, 4, g.shift.view(1, 1, 1, d, -1).expand(dc, e, c, d, h * w))
        return norm(torch.cat([cm, sh], dim=0).view(2 * dc, e, c, d, h, w) * g.mask[(1, 1)])

    def _softmax(self, s: torch.Tensor, k, g: Geometry) -> torch.Tensor:
        ex = torch.exp(8 * torch.tanh(s / 8))
        m = g.key_mask(k)
        ex_m = ex if m is None else ex * m
        feats = []
        for group in _softmax_groups(k):
            acc = 0
            for sub in group:
                src = ex_m if (4 in sub or 5 in sub) else ex
                acc = acc + src / (src.sum(dim=sub, keepdim=True) + 1e-6)
            feats.append(acc)
        return torch.cat(feats, dim=0)

    def forward(self, h: dict, g: Geometry) -> dict:
        nh = {k: norm(h[k]) for k in self.keys}
        br = {}
        for k in self.keys:
            proj = _mm(self.w_in[_tied(k)], nh[k])
            sizes = [p for _, p in self.split[key_name(k)]]
            br[k] = dict(zip([n for n, _ in self.split[key_name(k)]], torch.split(proj, sizes, dim=0)))
        lift = {k: br[k]["lift"] for k in self.keys}
        for a, k in self.lift_edges:
            lift[k] = lift[k] + lift[tuple(0 if i == a else b for i, b in enumerate(k))]
        pool = {k: br[k]["pool"] for k in self.keys}
        for a, k in self.pool_edges:
            up = tuple(1 if i == a else b for i, b in enumerate(k))
            pool[k] = pool[k] + g.pool(pool[up], up, a)
        new = {}
        for k in self.keys:
            b = br[k]
            feats = [norm(lift[k].expand(*g.shape(k, lift[k].shape[0]))), norm(pool[k]),
                     self._softmax(b["sm"], k, g), F.silu(b["mlp"])]
            if "dir" in b:
                feats.append(self._directional(b["dir"], g))
            out = h[k] + _mm(self.w_out[_tied(k)], torch.cat(feats, dim=0))
            if k[2]:
                wfull = self.mix[_tied(k)][self.rel]  # (d_in, d_out, c_in, c_out)
                out = out + torch.einsum("iecdxy,dfij->jecfxy", nh[k], wfull)
            new[k] = norm(out)
        return new


class RecursiveCompressor(nn.Module):
    """Gaussian latents -> multitensor -> `n_steps` applications of one shared Block (or of
    `n_steps` distinct blocks when untied), read out after every step.

    forward() returns: per step the colour logits (2, E, C, X, Y) of the non-background colours for
    the input (index 0) and output (1) grid of every example; the halting logits (n_steps,); and the
    KL (nats) of the latents against a standard normal prior.
    """

    def __init__(self, geometry: Geometry, n_steps: int = 4, zdim: int = 4, snr0: float = 5.0,
                 mu0: float = 1.0, tied: bool = True, keys=None, conditional: bool = False):
        super().__init__()
        self.g, self.n_steps, self.conditional = geometry, n_steps, conditional
        self.keys = list(keys or ALL_KEYS)
        if GRID_KEY not in self.keys or PLANE_KEY not in self.keys:
            raise ValueError("a key set needs ECXY (the colour logits) and EXY (the halting features)")
        self.mu, self.adjust, self.snr, self.dec_w, self.dec_b = (nn.ParameterDict() for _ in range(5))
        self.in_w = nn.ParameterDict()
        for k in self.keys:
            n = key_name(k)
            if conditional and k[0]:  # per-example keys read the given input grid instead of latents
                if _tied(k) not in self.in_w:
                    self.in_w[_tied(k)] = _linear(_width(k), 4 if k[1] else 3)
                    self.dec_b[_tied(k)] = nn.Parameter(torch.zeros(_width(k)))
                continue
            self.mu[n] = nn.Parameter(mu0 * torch.randn(*geometry.shape(k, zdim)))
            self.adjust[n] = nn.Parameter(torch.zeros(*geometry.shape(k, zdim)))
            self.snr[n] = nn.Parameter(torch.full((zdim,), float(snr0) / SNR_SPEED))
            if _tied(k) not in self.dec_w:
                self.dec_w[_tied(k)] = _linear(_width(k), zdim)
                self.dec_b[_tied(k)] = nn.Parameter(torch.zeros(_width(k)))
        self.blocks = nn.ModuleList([Block(self.keys, geometry.n_dir) for _ in range(1 if tied else n_steps)])
        self.head = _linear(2, 16)
        self.head_b = nn.Parameter(torch.zeros(2))
        self.halt = _linear(1, 33)
        self.halt_b = nn.Parameter(torch.zeros(1))

    def _channel(self, n: str, sample: bool):
        """Latent of key n through a Gaussian channel: the mean is normalized per channel, the signal
        fraction a^2 = sigmoid(rho) per element (rho = a per-channel level + a zero-mean local
        adjustment), z = a * mean + sqrt(1 - a^2) * noise. Its KL to N(0, 1), summed over elements,
        is 0.5 * softplus(rho) each (the capacity of the channel)."""
        mean = norm(self.mu[n])
        adj = self.adjust[n]
        rho = SNR_SPEED * self.snr[n].view(-1, 1, 1, 1, 1, 1) + adj - adj.mean(dim=(1, 2, 3, 4, 5), keepdim=True)
        z = torch.sqrt(torch.sigmoid(rho)) * mean
        if sample:
            z = z + torch.sqrt(torch.sigmoid(-rho)) * torch.randn_like(z)
        return z, 0.5 * F.softplus(rho).sum()

    def kl_terms(self) -> dict[str, float]:
        return {n: float(self._channel(n, False)[1]) for n in self.mu}

    def _read_input(self, k, grid: dict) -> torch.Tensor:
        """Features of the given grids pooled to key k: colour planes (if k has C), background,
        input bounds, output bounds (means over the axes k lacks)."""
        feats = ([grid["planes"]] if k[1] else []) + [grid["background"], grid["in_mask"], grid["out_mask"]]
        out = []
        for f in feats:
            dims = [a + 1 for a in (1, 2, 3, 4) if not k[a] and f.shape[a + 1] > 1]
            out.append(f.mean(dim=dims, keepdim=True) if dims else f)
        shape = self.g.shape(k, 1)[1:]
        x = torch.cat([o.expand(1, *shape) for o in out], dim=0)
        return _mm(self.in_w[_tied(k)], x)

    def forward(self, sample: bool = True, n_steps: int | None = None, grid: dict | None = None):
        """grid (conditional mode): "planes" (1, E, C, 1, X, Y) one-hot input colours,
        "background", "in_mask", "out_mask" (1, E, 1, 1, X, Y)."""
        h, kl = {}, 0
        for k in self.keys:
            n = key_name(k)
            if self.conditional and k[0]:
                h[k] = norm(self._read_input(k, grid) + self.dec_b[_tied(k)].view(-1, 1, 1, 1, 1, 1))
                continue
            z, kl_k = self._channel(n, sample)
            kl = kl + kl_k
            h[k] = norm(_mm(self.dec_w[_tied(k)], z) + self.dec_b[_tied(k)].view(-1, 1, 1, 1, 1, 1))
        logits, halts = [], []
        m = self.g.mask[(1, 1)][0, :, 0, 0]  # (E, X, Y)
        for t in range(n_steps or self.n_steps):
            prev = h
            h = self.blocks[min(t, len(self.blocks) - 1)](h, self.g)
            lg = (_mm(self.head, h[GRID_KEY]) + self.head_b.view(-1, 1, 1, 1, 1, 1))[:, :, :, 0]  # (2, E, C, X, Y)
            logits.append(lg)
            # halting features: how much the state moved in this step, and how unsure the output is
            logp = torch.log_softmax(torch.cat([torch.zeros_like(lg[1, :, :1]), lg[1]], dim=1), dim=1)
            entropy = (-(logp.exp() * logp).sum(dim=1) * m).sum() / m.sum()
            moved = [(h[k] - prev[k]).pow(2).mean(dim=(1, 2, 3, 4, 5)) for k in (GRID_KEY, PLANE_KEY)]
            halts.append(self.halt[0] @ torch.cat(moved + [entropy.view(1)]) + self.halt_b[0])
        return logits, torch.stack(halts), kl
