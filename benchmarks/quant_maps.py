"""Which 8-bit block-wise code should hold Adam's two moments? Measured on real Adam state.

What it measures
----------------
* **Real moments.** ``torch.optim.Adam`` (fp32, default betas and eps, seeded) trains three
  small models and the script snapshots every parameter's ``exp_avg`` (m) and ``exp_avg_sq``
  (v) at a few steps (10, 100 and 300 by default):

  (a) ``mlp``: an MLP 64-128-128-10 (ReLU) on scikit-learn's ``load_digits``, batch 64,
      lr 1e-3;
  (b) ``embed``: ``nn.Embedding(5000, 64)`` + ``nn.Linear(64, 5000)`` predicting the next
      token of a synthetic Zipf stream (exponent 1.1; the next token is a fixed permutation
      of the current one half the time, a fresh Zipf draw otherwise), 512 pairs a step,
      lr 1e-3. Rare tokens get rare gradients, so v is heavy-tailed within a block;
  (c) ``xfmr``: a one-layer pre-norm causal transformer (d=64, 4 heads, ff 256, vocab 1000)
      on sequences of length 32 from the same kind of Zipf/permutation chain, batch 32,
      lr 1e-3.

  Only tensors with at least 4096 elements are evaluated (smaller ones stay fp32 in
  adamkit's 8-bit state).
* **Codecs.** Every tensor is flattened and cut into blocks of 256 contiguous elements (the
  last one zero-padded), each with one fp32 scale, its max ``|x|``. Each map encodes the
  normalized value ``x / scale`` to one uint8 code and decodes code -> value * scale:

  - ``linear``: m: ``round(m / absmax * 127)`` (signed); v: ``round(v / max * 255)``.
  - ``dynamic``: the dynamic tree map of Dettmers et al. 2022 ("8-bit Optimizers via
    Block-wise Quantization"), rebuilt here from its description: after the sign bit (m
    only), ``e`` leading zero bits give the decimal exponent ``10**-e``, then an indicator 1
    bit, and the remaining bits a linear fraction over [0.1, 1] (bin midpoints). Signed: 2 x
    (64 + 32 + ... + 1) values over the decades 1 .. 1e-6, plus 0 and 1; unsigned: 128 + 64 +
    ... + 2 values over the same decades, plus 0 and 1 (the layout of bitsandbytes'
    ``create_dynamic_map``). Encoding is round-to-nearest against the sorted 256-value table
    (``torch.searchsorted`` and a neighbour comparison); decoding is a table lookup.
  - ``power``: m: ``q = sign(x) sqrt(|x| / absmax)``, code ``round(127 q) + 128``; v:
    ``q = (v / max) ** (1/4)``, code ``round(255 q)``.
  - ``float`` (adamkit's plan): the float32 bits of ``n = |x| / scale`` (a zero block divides
    by 1), re-based and rounded to 3 mantissa bits with integer arithmetic. m: e4m3-like,
    ``mag = clamp((bits - (112 << 23) + (1 << 19)) >> 20, 0, 127)``, 16 binades 2^-15 .. 1,
    mag 0 means 0, sign in bit 7. v: e5m3, ``code = clamp((bits - (96 << 23) + (1 << 19)) >>
    20, 0, 255)``, 32 binades 2^-31 .. 1, and code 0 decodes to the lowest binade ``2**-31``
    (times the scale), never to 0, so that a v that underflows cannot turn
    ``m / (sqrt(v) + eps)`` into ``m / eps``. These are adamkit's ``encode_8bit`` and
    ``decode_8bit`` (``adamkit/optim/_precision.py``), written out again here for finite
    values (the moments measured are finite); adamkit also keeps NaN and infinities in codes
    of their own (m: magnitudes 125 and 126; v: 253 and 254), which finite values never take.
  - ``float-e3m4`` (m) and ``float-e4m4`` (v): the same construction with one exponent bit
    traded for a fourth mantissa bit (m: 8 binades 2^-7 .. 1; v: 16 binades 2^-15 .. 1, code 0
    decoding to 2^-15).
* **Metrics.** For every m-map x v-map pair and over all snapshots together: the relative RMS
  error ``||u_q - u|| / ||u||`` of Adam's update direction ``u = m / (sqrt(v) + 1e-8)``
  (raw moments: the bias corrections scale both u and u_q alike); the median and 99th
  percentile of the per-element error ``|u_q - u| / (|u| + 1e-3 rms(u))`` (rms per tensor);
  the fraction of elements that blow up, ``|u_q| > 2 |u| + 1e-3 rms(u)``; the worst per-tensor
  ``max|u_q| / max|u|``; and how many elements had a non-zero decoded m over a v that decoded
  to exactly 0 (the "zero-point" failure). Per-element statistics count only elements whose
  true v is non-zero (never-touched embedding rows are exact under every map). Per moment:
  relative RMS error of m, v and sqrt(v), the median and 99th percentile of the per-element
  relative error over non-zero elements, the fraction of non-zero elements decoded to 0, and
  the time of one encode + decode of about a million real elements (median of a few runs).
* **Plot.** ``benchmarks/results/quant_maps.png``: the worst relative round-trip error (max over
  narrow log-spaced bins) against the normalized magnitude ``|x| / scale`` for each map, m
  and v side by side, over grey histograms of where the real moments' non-zero normalized
  magnitudes lie (anything below the axis counted in the first bin; the v panel reaches down
  to 1e-10 because real v does).

Everything runs single-threaded by default (``--threads``): on a shared two-core machine more
torch threads only contend. The full run took about 45 s there.

``--quick`` trains for a few steps on smaller models: it checks the harness, its numbers mean
nothing. Progress goes to stderr, the tables (markdown) to stdout.

Usage: ``python benchmarks/quant_maps.py [--quick] [--png PATH] [--threads N]``
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

HERE = Path(__file__).resolve().parent
DEFAULT_PNG = HERE / "results" / "quant_maps.png"
BLOCK = 256
MIN_NUMEL = 4096
EPS = 1e-8
REL_FLOOR = 1e-3  # per-element error denominators get REL_FLOOR * rms(u) added


def log(message: str) -> None:
    """Progress on stderr (stdout carries only the results)."""
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ codecs
# Each map is a pair of functions on *normalized* values (m: n in [-1, 1]; v: n in [0, 1]):
# encode(n) -> int64 codes in [0, 255], decode(codes) -> float32 n. The block-wise wrapper
# below supplies the per-block scale.
NormEncode = Callable[[Tensor], Tensor]
NormDecode = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Codec:
    name: str
    signed: bool
    encode_norm: NormEncode
    decode_norm: NormDecode


def _linear(signed: bool) -> tuple[NormEncode, NormDecode]:
    if signed:
        return (
            lambda n: torch.round(n * 127).long() + 128,
            lambda c: (c.float() - 128) / 127,
        )
    return (lambda n: torch.round(n * 255).long(), lambda c: c.float() / 255)


def _power(signed: bool) -> tuple[NormEncode, NormDecode]:
    if signed:

        def enc(n: Tensor) -> Tensor:
            return torch.round(torch.sign(n) * n.abs().sqrt() * 127).long() + 128

        def dec(c: Tensor) -> Tensor:
            q = (c.float() - 128) / 127
            return torch.sign(q) * q * q

        return enc, dec
    return (
        lambda n: torch.round(n.pow(0.25) * 255).long(),
        lambda c: (c.float() / 255).pow(4),
    )


def dynamic_table(signed: bool) -> Tensor:
    """The 256 sorted values of the dynamic tree map (Dettmers et al. 2022)."""
    values: list[float] = [0.0, 1.0]
    for e in range(7):  # decimal exponent 10**-e, e = number of leading zero bits
        # the bits after the sign bit (m only), the e zeros and the indicator bit are a linear
        # fraction: 6 - e of them signed, 7 - e unsigned (bitsandbytes' create_dynamic_map with
        # max_exponent_bits=7; the all-zero code is 0 and the spare one is 1.0)
        count = 2 ** ((6 if signed else 7) - e)
        edges = torch.linspace(0.1, 1.0, count + 1, dtype=torch.float64)
        mids = ((edges[:-1] + edges[1:]) / 2 * 10.0**-e).tolist()
        values += mids
        if signed:
            values += [-x for x in mids]
    assert len(values) == 256, len(values)
    return torch.tensor(sorted(values), dtype=torch.float32)


def _dynamic(signed: bool) -> tuple[NormEncode, NormDecode]:
    table = dynamic_table(signed)

    def enc(n: Tensor) -> Tensor:
        hi = torch.searchsorted(table, n.contiguous()).clamp_(1, 255)
        lo = hi - 1
        pick_hi = (table[hi] - n).abs() < (n - table[lo]).abs()
        return torch.where(pick_hi, hi, lo)

    return enc, lambda c: table[c]


def _float(signed: bool, exp_bits: int, man_bits: int) -> tuple[NormEncode, NormDecode]:
    """Float-like code on the normalized magnitude; (signed, 4, 3) and (unsigned, 5, 3) are the
    exact adamkit formulas in the module docstring."""
    assert exp_bits + man_bits == (7 if signed else 8)
    base = (127 - (2**exp_bits - 1)) << 23  # the lowest binade is 2**-(2**exp_bits - 1)
    shift = 23 - man_bits
    top = 127 if signed else 255

    def enc(n: Tensor) -> Tensor:
        bits = n.abs().float().contiguous().view(torch.int32)
        mag = ((bits - base + (1 << (shift - 1))) >> shift).clamp_(0, top).long()
        if signed:
            mag = mag | ((n < 0).long() << 7)
        return mag

    def dec(c: Tensor) -> Tensor:
        mag = c & 127 if signed else c
        val = ((mag.int() << shift) + base).view(torch.float32)
        if signed:
            val = torch.where(mag == 0, 0.0, val)
            return torch.where(c >= 128, -val, val)
        return val  # code 0 is the lowest binade: a second moment never decodes to 0

    return enc, dec


def _codec(name: str, signed: bool, maker: tuple[NormEncode, NormDecode]) -> Codec:
    return Codec(name, signed, maker[0], maker[1])


M_CODECS = [
    _codec("linear", True, _linear(True)),
    _codec("dynamic", True, _dynamic(True)),
    _codec("power", True, _power(True)),
    _codec("float", True, _float(True, 4, 3)),
    _codec("float-e3m4", True, _float(True, 3, 4)),
]
V_CODECS = [
    _codec("linear", False, _linear(False)),
    _codec("dynamic", False, _dynamic(False)),
    _codec("power", False, _power(False)),
    _codec("float", False, _float(False, 5, 3)),
    _codec("float-e4m4", False, _float(False, 4, 4)),
]


def encode(codec: Codec, x: Tensor) -> tuple[Tensor, Tensor, int]:
    """Block-wise encode: (uint8 codes [blocks, 256], fp32 scales [blocks], numel)."""
    flat = x.detach().reshape(-1).float()
    numel = flat.numel()
    pad = (-numel) % BLOCK
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    blocks = flat.view(-1, BLOCK)
    scale = blocks.abs().amax(dim=1)
    divisor = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = codec.encode_norm(blocks / divisor[:, None])
    return codes.to(torch.uint8), scale, numel


def decode(codec: Codec, codes: Tensor, scale: Tensor, numel: int) -> Tensor:
    values = codec.decode_norm(codes.long()) * scale[:, None]
    return values.reshape(-1)[:numel]


def roundtrip(codec: Codec, x: Tensor) -> Tensor:
    return decode(codec, *encode(codec, x)).view_as(x)


# ------------------------------------------------------------------------- collecting moments
@dataclass
class Snapshot:
    source: str  # model
    step: int
    name: str  # parameter
    m: Tensor
    v: Tensor


def _zipf_probs(vocab: int, exponent: float = 1.1) -> Tensor:
    ranks = torch.arange(1, vocab + 1, dtype=torch.float64)
    p = ranks.pow(-exponent)
    return (p / p.sum()).float()


def _chain_next(cur: Tensor, perm: Tensor, probs: Tensor, gen: torch.Generator) -> Tensor:
    fresh = torch.multinomial(probs, cur.numel(), replacement=True, generator=gen)
    keep = torch.rand(cur.numel(), generator=gen) < 0.5
    return torch.where(keep, perm[cur.reshape(-1)], fresh).view_as(cur)


def _train(
    source: str,
    model: nn.Module,
    batch: Callable[[], tuple[Tensor, Tensor]],
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    snap_steps: list[int],
) -> list[Snapshot]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    names = {p: n for n, p in model.named_parameters()}
    out: list[Snapshot] = []
    for step in range(1, max(snap_steps) + 1):
        x, y = batch()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        if step in snap_steps:
            for p, st in opt.state.items():
                if p.numel() >= MIN_NUMEL:
                    out.append(
                        Snapshot(
                            source,
                            step,
                            names[p],
                            st["exp_avg"].detach().clone(),
                            st["exp_avg_sq"].detach().clone(),
                        )
                    )
            log(f"  {source}: step {step} loss {loss.item():.3f}")
    return out


def collect_mlp(snap_steps: list[int], quick: bool) -> list[Snapshot]:
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    digits = load_digits()
    xs = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    ys = torch.tensor(digits.target, dtype=torch.long)
    hidden = 64 if quick else 128
    model = nn.Sequential(
        nn.Linear(64, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 10),
    )
    gen = torch.Generator().manual_seed(1)

    def batch() -> tuple[Tensor, Tensor]:
        idx = torch.randint(0, xs.shape[0], (64,), generator=gen)
        return xs[idx], ys[idx]

    return _train("mlp", model, batch, nn.functional.cross_entropy, snap_steps)


class _Bigram(nn.Module):
    def __init__(self, vocab: int, dim: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.out = nn.Linear(dim, vocab)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.emb(x))


def collect_embed(snap_steps: list[int], quick: bool) -> list[Snapshot]:
    torch.manual_seed(0)
    vocab = 1000 if quick else 5000
    probs = _zipf_probs(vocab)
    gen = torch.Generator().manual_seed(2)
    perm = torch.randperm(vocab, generator=gen)

    def batch() -> tuple[Tensor, Tensor]:
        cur = torch.multinomial(probs, 512, replacement=True, generator=gen)
        return cur, _chain_next(cur, perm, probs, gen)

    return _train("embed", _Bigram(vocab, 64), batch, nn.functional.cross_entropy, snap_steps)


class _TinyTransformer(nn.Module):
    def __init__(self, vocab: int, dim: int, seq: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(seq, dim) * 0.02)
        self.block = nn.TransformerEncoderLayer(
            dim, nhead=4, dim_feedforward=4 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(seq))

    def forward(self, x: Tensor) -> Tensor:
        h = self.tok(x) + self.pos[: x.shape[1]]
        h = self.block(h, src_mask=self.mask, is_causal=True)
        return self.head(self.norm(h))


def collect_xfmr(snap_steps: list[int], quick: bool) -> list[Snapshot]:
    torch.manual_seed(0)
    vocab, seq, bsz = (300, 16, 16) if quick else (1000, 32, 32)
    probs = _zipf_probs(vocab)
    gen = torch.Generator().manual_seed(3)
    perm = torch.randperm(vocab, generator=gen)

    def batch() -> tuple[Tensor, Tensor]:
        toks = [torch.multinomial(probs, bsz, replacement=True, generator=gen)]
        for _ in range(seq):
            toks.append(_chain_next(toks[-1], perm, probs, gen))
        stream = torch.stack(toks, dim=1)
        return stream[:, :-1], stream[:, 1:]

    def loss_fn(logits: Tensor, y: Tensor) -> Tensor:
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    return _train("xfmr", _TinyTransformer(vocab, 64, seq), batch, loss_fn, snap_steps)


# ---------------------------------------------------------------------------------- metrics
def _update(m: Tensor, v: Tensor) -> Tensor:
    return m / (v.sqrt() + EPS)


def _rel_rms(err_sq: float, ref_sq: float) -> float:
    return math.sqrt(err_sq / ref_sq) if ref_sq > 0 else float("nan")


def _quantiles(parts: list[Tensor], qs: tuple[float, ...] = (50.0, 99.0)) -> list[float]:
    if not parts:
        return [float("nan")] * len(qs)
    arr = torch.cat(parts).double().numpy()
    return [float(x) for x in np.percentile(arr, qs)]


@dataclass
class MomentRow:
    codec: str
    rel_rms: float
    rel_rms_sqrt: float  # v only
    median_rel: float
    p99_rel: float
    zeroed: float
    ms: float


def moment_rows(
    codecs: list[Codec],
    snaps: list[Snapshot],
    decoded: dict[tuple[str, int], Tensor],
    which: str,
    timings: dict[str, float],
) -> list[MomentRow]:
    rows = []
    for codec in codecs:
        err = ref = err_s = ref_s = 0.0
        rel_parts: list[Tensor] = []
        zeroed = nonzero = 0
        for i, s in enumerate(snaps):
            x = s.m if which == "m" else s.v
            xq = decoded[(codec.name, i)]
            err += float((xq - x).double().pow(2).sum())
            ref += float(x.double().pow(2).sum())
            if which == "v":
                err_s += float((xq.sqrt() - x.sqrt()).double().pow(2).sum())
                ref_s += float(x.double().sum())
            nz = x != 0
            rel_parts.append(((xq - x).abs() / x.abs())[nz].float())
            zeroed += int((xq[nz] == 0).sum())
            nonzero += int(nz.sum())
        med, p99 = _quantiles(rel_parts)
        rows.append(
            MomentRow(
                codec.name,
                _rel_rms(err, ref),
                _rel_rms(err_s, ref_s) if which == "v" else float("nan"),
                med,
                p99,
                zeroed / max(nonzero, 1),
                timings[codec.name],
            )
        )
    return rows


@dataclass
class PairRow:
    m_map: str
    v_map: str
    rel_rms_u: float
    median_rel_u: float
    p99_rel_u: float
    blowup_frac: float
    max_ratio: float
    zero_point: int
    by_source: dict[str, tuple[float, float, int]]  # source -> (rel RMS u, p99 rel u, zero-pts)


def pair_rows(
    snaps: list[Snapshot],
    m_dec: dict[tuple[str, int], Tensor],
    v_dec: dict[tuple[str, int], Tensor],
) -> list[PairRow]:
    sources = sorted({s.source for s in snaps})
    updates = [_update(s.m, s.v) for s in snaps]
    rms = [float(u.pow(2).mean().sqrt()) for u in updates]
    rows = []
    for mc in M_CODECS:
        for vc in V_CODECS:
            err = {src: 0.0 for src in sources}
            ref = {src: 0.0 for src in sources}
            rel_parts: dict[str, list[Tensor]] = {src: [] for src in sources}
            zero_point = {src: 0 for src in sources}
            blow = count = 0
            max_ratio = 0.0
            for i, s in enumerate(snaps):
                u = updates[i]
                mq, vq = m_dec[(mc.name, i)], v_dec[(vc.name, i)]
                uq = _update(mq, vq)
                du = (uq - u).abs()
                err[s.source] += float(du.double().pow(2).sum())
                ref[s.source] += float(u.double().pow(2).sum())
                touched = s.v != 0
                floor = REL_FLOOR * rms[i]
                rel_parts[s.source].append((du / (u.abs() + floor))[touched].float())
                blow += int((uq.abs() > 2 * u.abs() + floor)[touched].sum())
                count += int(touched.sum())
                zero_point[s.source] += int(((vq == 0) & (mq != 0)).sum())
                umax = float(u.abs().max())
                if umax > 0:
                    max_ratio = max(max_ratio, float(uq.abs().max()) / umax)
            all_parts = [t for src in sources for t in rel_parts[src]]
            med, p99 = _quantiles(all_parts)
            by_source = {
                src: (
                    _rel_rms(err[src], ref[src]),
                    _quantiles(rel_parts[src], (99.0,))[0],
                    zero_point[src],
                )
                for src in sources
            }
            rows.append(
                PairRow(
                    mc.name,
                    vc.name,
                    _rel_rms(sum(err.values()), sum(ref.values())),
                    med,
                    p99,
                    blow / max(count, 1),
                    max_ratio,
                    sum(zero_point.values()),
                    by_source,
                )
            )
    return rows


def time_codecs(codecs: list[Codec], sample: Tensor, reps: int) -> dict[str, float]:
    out = {}
    for codec in codecs:
        roundtrip(codec, sample)  # warm-up
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            roundtrip(codec, sample)
            times.append(time.perf_counter() - t0)
        out[codec.name] = statistics.median(times) * 1e3
    return out


# ------------------------------------------------------------------------------------ output
def _fmt(x: float, digits: int = 3) -> str:
    if math.isnan(x):
        return "-"
    if x == 0:
        return "0"
    if math.isinf(x):
        return "inf"
    if abs(x) >= 1e4 or abs(x) < 1e-3:
        return f"{x:.2e}"
    return f"{x:.{digits}g}"


def print_tables(
    m_rows: list[MomentRow],
    v_rows: list[MomentRow],
    pairs: list[PairRow],
    snaps: list[Snapshot],
    sample_numel: int,
) -> None:
    sources = sorted({s.source for s in snaps})
    steps = sorted({s.step for s in snaps})
    n_el = sum(s.m.numel() for s in snaps)
    print(
        f"Snapshots: {len(snaps)} tensors (>= {MIN_NUMEL} elements) from {', '.join(sources)} "
        f"at steps {', '.join(map(str, steps))}; {n_el:,} elements per moment. "
        f"Block {BLOCK}, u = m / (sqrt(v) + {EPS:g}).\n"
    )
    print("### Update direction u, per m-map x v-map pair\n")
    head = (
        "| m map | v map | rel RMS err u | median rel err u | p99 rel err u | blow-ups "
        "(frac) | max abs(u_q) / max abs(u) | v_q=0 under m_q!=0 |"
    )
    print(head)
    print("|" + "---|" * 8)
    for r in pairs:
        print(
            f"| {r.m_map} | {r.v_map} | {_fmt(r.rel_rms_u)} | {_fmt(r.median_rel_u)} | "
            f"{_fmt(r.p99_rel_u)} | {_fmt(r.blowup_frac)} | {_fmt(r.max_ratio)} | {r.zero_point} |"
        )
    print(
        "\n### Update direction by model: rel RMS err u / p99 rel err u / "
        "v_q=0 under m_q!=0 count\n"
    )
    print("| m map | v map | " + " | ".join(sources) + " |")
    print("|" + "---|" * (2 + len(sources)))
    for r in pairs:
        cells = " | ".join(
            f"{_fmt(r.by_source[s][0])} / {_fmt(r.by_source[s][1])} / {r.by_source[s][2]}"
            for s in sources
        )
        print(f"| {r.m_map} | {r.v_map} | {cells} |")
    print(
        f"\n### m (exp_avg) maps\n\n| map | rel RMS err | median rel err | p99 rel err | "
        f"non-zero -> 0 | enc+dec ms ({sample_numel / 1e6:.2f}M el) |"
    )
    print("|" + "---|" * 6)
    for r in m_rows:
        print(
            f"| {r.codec} | {_fmt(r.rel_rms)} | {_fmt(r.median_rel)} | {_fmt(r.p99_rel)} | "
            f"{_fmt(r.zeroed)} | {r.ms:.1f} |"
        )
    print(
        "\n### v (exp_avg_sq) maps\n\n| map | rel RMS err v | rel RMS err sqrt(v) | "
        f"median rel err v | p99 rel err v | non-zero -> 0 | enc+dec ms "
        f"({sample_numel / 1e6:.2f}M el) |"
    )
    print("|" + "---|" * 7)
    for r in v_rows:
        print(
            f"| {r.codec} | {_fmt(r.rel_rms)} | {_fmt(r.rel_rms_sqrt)} | {_fmt(r.median_rel)} | "
            f"{_fmt(r.p99_rel)} | {_fmt(r.zeroed)} | {r.ms:.1f} |"
        )

    def best(key: Callable[[PairRow], float], label: str) -> None:
        low = min(key(r) for r in pairs)
        tied = ", ".join(f"**{r.m_map} / {r.v_map}**" for r in pairs if key(r) == low)
        print(f"- lowest {label}: {tied} ({_fmt(low)})")

    print("\n### Best pair per metric\n")
    best(lambda r: r.rel_rms_u, "rel RMS err u")
    best(lambda r: r.median_rel_u, "median rel err u")
    best(lambda r: r.p99_rel_u, "p99 rel err u")
    best(lambda r: r.blowup_frac, "blow-up fraction")
    best(lambda r: abs(math.log(max(r.max_ratio, 1e-30))), "|log max-ratio|")
    worst_of = {(r.m_map, r.v_map): max(r.by_source[s][1] for s in sources) for r in pairs}
    k = min(worst_of, key=lambda p: worst_of[p])
    print(f"- lowest worst-model p99 rel err u: **{k[0]} / {k[1]}** ({_fmt(worst_of[k])})")


def plot(path: Path, snaps: list[Snapshot]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    panels = [("m (exp_avg)", M_CODECS, -6.0), ("v (exp_avg_sq)", V_CODECS, -10.0)]
    for ax, (title, codecs, lo) in zip(axes, panels, strict=True):
        # real data: normalized magnitudes |x| / block max, non-zero elements only
        norms = []
        for s in snaps:
            x = (s.m if codecs is M_CODECS else s.v).reshape(-1).float()
            pad = (-x.numel()) % BLOCK
            blocks = torch.nn.functional.pad(x, (0, pad)).view(-1, BLOCK).abs()
            n = blocks / blocks.amax(dim=1, keepdim=True).clamp_min(1e-38)
            norms.append(n[blocks > 0])
        # anything below the axis is counted in the first bin
        data = torch.cat(norms).double().clamp_min(10.0**lo).numpy()
        hx = ax.twinx()
        hx.hist(
            data,
            bins=np.logspace(lo, 0, 121),
            color="0.82",
            weights=np.full(len(data), 1 / len(data)),
        )
        hx.set_ylabel("fraction of real non-zero elements (grey histogram)")
        ax.set_zorder(hx.get_zorder() + 1)
        ax.patch.set_visible(False)

        grid = torch.logspace(lo, 0, 200_000, dtype=torch.float64).float()
        bins = np.linspace(lo, 0, 241)
        centers = 10 ** ((bins[:-1] + bins[1:]) / 2)
        for codec in codecs:
            dec = codec.decode_norm(codec.encode_norm(grid))
            rel = ((dec - grid).abs() / grid).double().numpy()
            which = np.clip(np.digitize(np.log10(grid.double().numpy()), bins) - 1, 0, 239)
            worst = np.zeros(240)
            np.maximum.at(worst, which, rel)
            ax.plot(centers, np.maximum(worst, 1e-5), label=codec.name, lw=1.4)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(10.0**lo, 1)
        ax.set_ylim(1e-4, 1e2)
        ax.set_xlabel("normalized magnitude |x| / block max")
        ax.set_ylabel("worst relative round-trip error")
        ax.set_title(title)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    fig.suptitle(f"8-bit block-wise maps (block {BLOCK}): relative error vs magnitude")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny run that checks the harness")
    ap.add_argument("--png", type=Path, default=DEFAULT_PNG, help="where to write the plot")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared 2-core machine more threads only contend)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    snap_steps = [5, 20] if args.quick else [10, 100, 300]
    snaps: list[Snapshot] = []
    for collect in (collect_mlp, collect_embed, collect_xfmr):
        log(f"training {collect.__name__.removeprefix('collect_')} ...")
        snaps += collect(snap_steps, args.quick)
    log(f"collected {len(snaps)} snapshots in {time.perf_counter() - t_start:.1f}s")

    m_dec = {(c.name, i): roundtrip(c, s.m) for c in M_CODECS for i, s in enumerate(snaps)}
    v_dec = {(c.name, i): roundtrip(c, s.v) for c in V_CODECS for i, s in enumerate(snaps)}

    sample_m = torch.cat([s.m.reshape(-1) for s in snaps])[: 1 << 20]
    sample_v = torch.cat([s.v.reshape(-1) for s in snaps])[: 1 << 20]
    reps = 3 if args.quick else 7
    m_times = time_codecs(M_CODECS, sample_m, reps)
    v_times = time_codecs(V_CODECS, sample_v, reps)

    m_rows = moment_rows(M_CODECS, snaps, m_dec, "m", m_times)
    v_rows = moment_rows(V_CODECS, snaps, v_dec, "v", v_times)
    pairs = pair_rows(snaps, m_dec, v_dec)
    print_tables(m_rows, v_rows, pairs, snaps, sample_m.numel())

    plot(args.png, snaps)
    log(f"wrote {args.png}; total {time.perf_counter() - t_start:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
