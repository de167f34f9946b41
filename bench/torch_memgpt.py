#!/usr/bin/env python3
"""SPEC.md's MemGPT written plainly in PyTorch, for side-by-side timing.

Trains a preset for a few steps (forward over k segments with the memory
carried, backward, AdamW) and prints the training throughput. The same script
runs on the CPU (Debian's python3-torch with OpenBLAS) and on a GPU
(--device cuda, optionally --bf16 autocast; SDPA is used where PyTorch has it).

  python3 bench/torch_memgpt.py --preset small --batch-size 8 --segments 4 --steps 5 --json
"""
import argparse
import json
import math
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {
    "tiny": dict(vocabSize=256, dModel=64, nLayers=2, nHeads=2, dFF=256, segmentLen=32, memSlots=8, copyHead=True, positional="rope", specVersion=2),
    "small": dict(vocabSize=256, dModel=256, nLayers=4, nHeads=4, dFF=1024, segmentLen=128, memSlots=16, copyHead=True, positional="rope", specVersion=2),
    "base": dict(vocabSize=50257, dModel=768, nLayers=12, nHeads=12, dFF=3072, segmentLen=512, memSlots=64, copyHead=True, positional="rope", specVersion=2),
}

HAS_SDPA = hasattr(F, "scaled_dot_product_attention")


def rope_tables(T, d, device, start=0):
    inv = 10000.0 ** (-torch.arange(0, d // 2, dtype=torch.float64) * 2 / d)
    angles = torch.arange(start, start + T, dtype=torch.float64)[:, None] * inv[None, :]
    return angles.cos().float().to(device), angles.sin().float().to(device)


def apply_rope(z, cos, sin):  # z [B,H,T,d], rotate-half form
    half = z.shape[-1] // 2
    a, b = z[..., :half], z[..., half:]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


def attend(q, k, v, causal):
    if HAS_SDPA:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return attend_lse(q, k, v, causal)[0]


def attend_lse(q, k, v, causal):
    """softmax(q·kᵀ/√d)·v and the scores' logsumexp per query row (what SPEC v2's read gate needs)."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        T = q.shape[-2]
        mask = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    return scores.softmax(-1) @ v, scores.logsumexp(-1, keepdim=True)


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        D, H, Fd, S = c["dModel"], c["nHeads"], c["dFF"], c["memSlots"]
        self.c = c
        self.ln1 = nn.LayerNorm(D)
        self.qkv = nn.Linear(D, 3 * D)
        self.out = nn.Linear(D, D)
        if S > 0:
            self.mem_init = nn.Parameter(torch.randn(S, D) * 0.02)
            self.mem_ln = nn.LayerNorm(D)
            self.mem_kv = nn.Linear(D, 2 * D)
            self.mem_gate = nn.Linear(D, H)
            self.ptr_ln = nn.LayerNorm(D)
            self.ptr_q = nn.Linear(D, D, bias=False)
            self.ptr_k = nn.Linear(D, D, bias=False)
            self.ptr_v = nn.Linear(D, D, bias=False)
            if c.get("specVersion", 1) >= 2:
                # SPEC v2: the pointer's positional bias, starting as memgpt's does (the last ⌈S/2⌉ slots a shift
                # register: slot j prefers token T − S + j; the others unbiased).
                pos = torch.zeros(S, c["segmentLen"])
                for j in range(S - (S + 1) // 2, S):
                    if c["segmentLen"] - S + j >= 0:
                        pos[j, c["segmentLen"] - S + j] = 8.0
                self.ptr_pos = nn.Parameter(pos)
            self.mem_update = nn.Linear(2 * D, D)
        self.ln2 = nn.LayerNorm(D)
        self.fc1 = nn.Linear(D, Fd)
        self.fc2 = nn.Linear(Fd, D)

    def forward(self, h, M, cos, sin):
        c = self.c
        B, T, D = h.shape
        H = c["nHeads"]
        d = D // H
        u = self.ln1(h)
        q, k, v = (t.view(B, T, H, d).transpose(1, 2) for t in self.qkv(u).split(D, dim=-1))
        q0 = q
        if c["positional"] == "rope":
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        v2 = c.get("specVersion", 1) >= 2
        if c["memSlots"] > 0 and v2:
            # SPEC v2: slot j sits at position j − S, just before the segment; the rotated query reads it (with rope),
            # and the gate logit moves the memory's share of one softmax over the slots and the segment's keys.
            S = c["memSlots"]
            mk, mv = (t.view(B, -1, H, d).transpose(1, 2) for t in self.mem_kv(self.mem_ln(M)).split(D, dim=-1))
            qm = q0
            if c["positional"] == "rope":
                mcos, msin = rope_tables(S, d, h.device, start=-S)
                mk, qm = apply_rope(mk, mcos, msin), q
            A, lse_a = attend_lse(q, k, v, causal=True)
            R, lse_r = attend_lse(qm, mk, mv, causal=False)
            g = torch.sigmoid(self.mem_gate(u).transpose(1, 2).unsqueeze(-1) + lse_r - lse_a)  # [B,H,T,1]
            O = g * R + (1 - g) * A
        elif c["memSlots"] > 0:
            A = attend(q, k, v, causal=True)
            mk, mv = (t.view(B, -1, H, d).transpose(1, 2) for t in self.mem_kv(self.mem_ln(M)).split(D, dim=-1))
            R = attend(q0, mk, mv, causal=False)
            g = torch.sigmoid(self.mem_gate(u)).transpose(1, 2).unsqueeze(-1)  # [B,H,T,1]
            O = g * R + (1 - g) * A
        else:
            O = attend(q, k, v, causal=True)
        h = h + self.out(O.transpose(1, 2).reshape(B, T, D))
        h = h + self.fc2(F.gelu(self.fc1(self.ln2(h)), approximate="tanh"))
        if c["memSlots"] > 0:
            cn = self.ptr_ln(h)
            P = self.ptr_q(M) @ self.ptr_k(cn).transpose(1, 2) / math.sqrt(D)
            if v2:
                P = P + self.ptr_pos[:, self.ptr_pos.shape[1] - T:]  # end-aligned for a shorter segment
            Z = P.softmax(-1) @ self.ptr_v(cn)
            U = torch.sigmoid(self.mem_update(torch.cat([M, Z], dim=-1)))
            M = (1 - U) * M + U * Z
        return h, M


class MemGPT(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        D, V = c["dModel"], c["vocabSize"]
        self.tok_emb = nn.Parameter(torch.randn(V, D) * 0.02)
        self.layers = nn.ModuleList(Layer(c) for _ in range(c["nLayers"]))
        self.ln_f = nn.LayerNorm(D)
        if c["copyHead"]:
            self.copy_q = nn.Linear(D, D, bias=False)
            self.copy_k = nn.Linear(D, D, bias=False)
            self.copy_gen = nn.Linear(D, 1)

    def segment_nll(self, hf, x, y):
        logp = (hf @ self.tok_emb.t()).float().log_softmax(-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
        if not self.c["copyHead"]:
            return -logp
        D, T = hf.shape[-1], hf.shape[1]
        E = (self.copy_q(hf) @ self.copy_k(hf).transpose(1, 2)).float() / math.sqrt(D)
        causal = torch.ones(T, T, dtype=torch.bool, device=hf.device).tril()
        beta = E.masked_fill(~causal, float("-inf")).softmax(-1)
        match = (x.unsqueeze(1) == y.unsqueeze(2)) & causal  # [B, p, p']
        mass = (beta * match).sum(-1)
        g = self.copy_gen(hf).float().squeeze(-1)
        copy_term = F.logsigmoid(-g) + torch.where(mass > 0, mass.clamp_min(1e-38).log(), torch.full_like(mass, float("-inf")))
        return -torch.logaddexp(F.logsigmoid(g) + logp, copy_term)

    def forward(self, tokens, segments):
        c = self.c
        T, D = c["segmentLen"], c["dModel"]
        B = tokens.shape[0]
        cos, sin = rope_tables(T, D // c["nHeads"], tokens.device)
        memory = [l.mem_init.unsqueeze(0).expand(B, -1, -1) if c["memSlots"] > 0 else None for l in self.layers]
        total = 0.0
        for s in range(segments):
            x, y = tokens[:, s * T:(s + 1) * T], tokens[:, s * T + 1:(s + 1) * T + 1]
            h = self.tok_emb[x]
            if c["positional"] == "sinusoidal":
                p = torch.arange(T, dtype=torch.float64, device=x.device)[:, None]
                div = 10000.0 ** (torch.arange(0, D, 2, dtype=torch.float64, device=x.device) / D)
                pe = torch.zeros(T, D, dtype=torch.float64, device=x.device)
                pe[:, 0::2], pe[:, 1::2] = (p / div).sin(), (p / div).cos()
                h = h + pe.float()
            for i, layer in enumerate(self.layers):
                h, memory[i] = layer(h, memory[i], cos, sin)
            total = total + self.segment_nll(self.ln_f(h), x, y).sum()
        return total / (B * segments * T)


def blas_library():
    """The BLAS actually loaded (Debian's torch links the generic libblas.so.3, which alternatives point at OpenBLAS or not)."""
    torch.ones(64, 64) @ torch.ones(64, 64)
    try:
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1].rsplit("/", 1)[-1] for line in f if "blas" in line.lower()}
        return ",".join(sorted(libs)) or "none"
    except OSError:
        return "unknown"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small", choices=PRESETS)
    ap.add_argument("--batch-size", "--batch", dest="batch", type=int, default=8)
    ap.add_argument("--segments", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    c = PRESETS[a.preset]
    model = MemGPT(c).to(a.device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    N = a.segments * c["segmentLen"]
    tokens = torch.randint(0, c["vocabSize"], (a.batch, N + 1), device=a.device)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type="cuda" if a.device.startswith("cuda") else "cpu", dtype=torch.bfloat16, enabled=a.bf16):
            loss = model(tokens, a.segments)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    def sync():
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(a.warmup):
        step()
    sync()
    times, losses = [], []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        losses.append(float(step()))
        sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    median = times[len(times) // 2]
    result = {
        "impl": "pytorch-eager" + ("-bf16" if a.bf16 else ""),
        "torch": torch.__version__,
        "device": a.device if not a.device.startswith("cuda") else torch.cuda.get_device_name(),
        "threads": torch.get_num_threads(),
        "blas": blas_library(),
        "sdpa": HAS_SDPA,
        "preset": a.preset,
        "batch": a.batch,
        "segments": a.segments,
        "parameters": sum(p.numel() for p in model.parameters()),
        "medianStepSeconds": median,
        "tokensPerSecond": a.batch * N / median,
        "losses": losses,
    }
    print(json.dumps(result) if a.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
