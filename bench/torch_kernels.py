#!/usr/bin/env python3
"""PyTorch's side of the CUDA kernel comparisons (our kernels against cuBLAS and PyTorch's own), at the base preset's shapes.

Times, with CUDA events (median of many runs after warm-up, inputs rotated so
that the L2 cache does not hold them):
  - bf16 GEMMs through torch.matmul (cuBLAS): the linear layers' forward and
    backward shapes;
  - attention forward + backward: scaled_dot_product_attention (causal, RoPE
    applied outside) plus the memory read and its gate written in PyTorch, as
    SPEC.md §3 defines them;
  - layer norm forward + backward (bf16), fused AdamW over a GPT-2-sized set of
    float32 parameters, and a device-to-device copy (the bandwidth ceiling).

  python3 bench/torch_kernels.py --json > torch-kernels.json
"""
import argparse
import json
import math
import statistics

import torch
import torch.nn.functional as F

B, T, D, H, F_, S = 16, 512, 768, 12, 3072, 64
d = D // H


def time_cuda(fn, sets, warmup=5, reps=50):
    """Median milliseconds of fn(inputs) over reps runs, cycling through input sets."""
    for i in range(warmup):
        fn(sets[i % len(sets)])
    torch.cuda.synchronize()
    times = []
    for i in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(sets[i % len(sets)])
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def gemms(dev):
    m = B * T
    rows = []
    # (name, M, N, K): y = x·Wᵀ forward; dx = dy·W and dW = dyᵀ·x backward.
    for name, n, k in [("qkv", 3 * D, D), ("out", D, D), ("fc1", F_, D), ("fc2", D, F_)]:
        for kind, mm, nn, kk in [("forward", m, n, k), ("dx", m, k, n), ("dW", n, k, m)]:
            sets = [(torch.randn(mm, kk, device=dev, dtype=torch.bfloat16), torch.randn(kk, nn, device=dev, dtype=torch.bfloat16)) for _ in range(3)]
            ms = time_cuda(lambda ab: torch.matmul(ab[0], ab[1]), sets)
            rows.append({"op": f"matmul bf16 {name} {kind}", "shape": f"{mm}x{kk} @ {kk}x{nn}", "ms": ms, "tflops": 2 * mm * nn * kk / ms / 1e9})
    return rows


def rope(z, cos, sin):
    half = z.shape[-1] // 2
    a, b = z[..., :half], z[..., half:]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


def attention(dev, dtype):
    inv = 10000.0 ** (-torch.arange(0, d // 2, dtype=torch.float64) * 2 / d)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    cos, sin = ang.cos().to(dev, dtype), ang.sin().to(dev, dtype)

    def make():
        q, k, v = (torch.randn(B, H, T, d, device=dev, dtype=dtype, requires_grad=True) for _ in range(3))
        mk, mv = (torch.randn(B, H, S, d, device=dev, dtype=dtype, requires_grad=True) for _ in range(2))
        g = torch.randn(B, H, T, 1, device=dev, dtype=dtype, requires_grad=True)
        dout = torch.randn(B, H, T, d, device=dev, dtype=dtype)
        return q, k, v, mk, mv, g, dout

    def step(x):
        q, k, v, mk, mv, g, dout = x
        a = F.scaled_dot_product_attention(rope(q, cos, sin), rope(k, cos, sin), v, is_causal=True)
        r = torch.softmax(q @ mk.transpose(-1, -2) / math.sqrt(d), dim=-1) @ mv
        gate = torch.sigmoid(g)
        out = gate * r + (1 - gate) * a
        out.backward(dout)

    sets = [make() for _ in range(2)]
    ms = time_cuda(step, sets, reps=30)
    # FLOPs of the causal self-attention (half of QKᵀ and PV) and the memory read, forward ×(1 + 2.5) for backward.
    fwd = B * H * (2 * T * T * d + 4 * T * S * d)
    return {"op": f"attention+memory read+gate fwd+bwd ({str(dtype).split('.')[-1]}, SDPA)", "shape": f"B{B} H{H} T{T} d{d} S{S}", "ms": ms, "tflops": 3.5 * fwd / ms / 1e9}


def layernorm(dev):
    def make():
        x = torch.randn(B * T, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
        w = torch.ones(D, device=dev, dtype=torch.bfloat16, requires_grad=True)
        b = torch.zeros(D, device=dev, dtype=torch.bfloat16, requires_grad=True)
        return x, w, b, torch.randn(B * T, D, device=dev, dtype=torch.bfloat16)

    def step(t):
        x, w, b, dy = t
        F.layer_norm(x, (D,), w, b, 1e-5).backward(dy)

    ms = time_cuda(step, [make() for _ in range(3)])
    moved = 2 * B * T * D * 5  # forward reads x, writes y; backward reads x, dy, writes dx (bf16)
    return {"op": "layer_norm fwd+bwd bf16", "shape": f"[{B * T},{D}]", "ms": ms, "gbs": moved / ms / 1e6}


def adamw(dev):
    n = 124_000_000
    sizes = [n // 100] * 100
    params = [torch.randn(s, device=dev, requires_grad=True) for s in sizes]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    ms = time_cuda(lambda _: opt.step(), [None])
    moved = 4 * n * 7  # read w, g, m, v; write w, m, v (float32)
    return {"op": "AdamW fused (float32 master)", "shape": f"{n} params", "ms": ms, "gbs": moved / ms / 1e6}


def copy_bandwidth(dev):
    n = 1 << 30
    a, b = torch.empty(n, dtype=torch.uint8, device=dev), torch.empty(n, dtype=torch.uint8, device=dev)
    ms = time_cuda(lambda _: b.copy_(a), [None], reps=20)
    return {"op": "device-to-device copy", "shape": "1 GiB", "ms": ms, "gbs": 2 * n / ms / 1e6}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(dev)
    rows = gemms(dev) + [attention(dev, torch.bfloat16), attention(dev, torch.float32), layernorm(dev), adamw(dev), copy_bandwidth(dev)]
    out = {"gpu": props.name, "torch": torch.__version__, "cuda": torch.version.cuda, "rows": rows}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"# {out['gpu']}, torch {out['torch']}, CUDA {out['cuda']}")
        for r in rows:
            rate = f"{r['tflops']:.1f} TFLOP/s" if "tflops" in r else f"{r['gbs']:.0f} GB/s"
            print(f"{r['op']:<45} {r['shape']:<24} {r['ms']:9.3f} ms  {rate}")


if __name__ == "__main__":
    main()
