#!/usr/bin/env python3
"""Proof that PyTorch reads memgpt checkpoints (SPEC.md §7) with nothing but json, struct and torch.

  python3 bench/torch_load.py CKPT.safetensors                     # tensor names, dtypes, shapes, config
  python3 bench/torch_load.py CKPT.safetensors --tokens FILE.json  # + {"loss": ...} of one sample

FILE.json is a JSON list of k·T+1 token ids (one sample). The loss comes from bench/torch_memgpt.py's
MemGPT with the checkpoint's weights loaded by their SPEC §2 names. (Debian's python3-torch has no
safetensors package, hence this small reader.)
"""
import argparse
import json
import os
import struct
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_memgpt import MemGPT  # noqa: E402

DTYPES = {
    "F32": (torch.float32, 4), "F64": (torch.float64, 8), "F16": (torch.float16, 2), "BF16": (None, 2),
    "I32": (torch.int32, 4), "I64": (torch.int64, 8), "U8": (torch.uint8, 1), "I8": (torch.int8, 1), "BOOL": (torch.bool, 1),
}


def read_safetensors(path):
    """{name: tensor}, {name: stored dtype} and the metadata; BF16 is widened to float32 by shifting its bits (exact)."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    metadata = header.pop("__metadata__", {})
    data = blob[8 + n:]
    tensors, stored = {}, {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        dtype, size = DTYPES[info["dtype"]]
        raw = bytearray(data[begin:end])
        if info["dtype"] == "BF16":
            halves = torch.frombuffer(raw, dtype=torch.int16) if raw else torch.zeros(0, dtype=torch.int16)
            t = ((halves.to(torch.int32) & 0xFFFF) << 16).view(torch.float32)
        else:
            t = torch.frombuffer(raw, dtype=dtype) if raw else torch.zeros(0, dtype=dtype)
        tensors[name] = t.reshape(info["shape"])
        stored[name] = info["dtype"]
    return tensors, stored, metadata


def torch_name(spec_name):
    """SPEC §2 name -> attribute path in torch_memgpt.MemGPT (its Layer flattens the dotted groups)."""
    parts = spec_name.split(".")
    if parts[0] == "layers":
        group = ".".join(parts[2:-1])  # e.g. "attn.qkv", "mem.init" has none
        leaf = parts[-1]
        if spec_name.endswith("mem.init"):
            return f"layers.{parts[1]}.mem_init"
        if spec_name.endswith("ptr.pos"):
            return f"layers.{parts[1]}.ptr_pos"
        mapped = {"attn.qkv": "qkv", "attn.out": "out", "ffn.fc1": "fc1", "ffn.fc2": "fc2"}.get(group, group.replace(".", "_"))
        return f"layers.{parts[1]}.{mapped}.{leaf}"
    if parts[0] == "copy":
        return f"copy_{parts[1]}.{parts[2]}"
    return spec_name  # tok_emb, ln_f.weight, ln_f.bias


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--tokens", help="JSON list of k*T+1 token ids")
    a = ap.parse_args()
    tensors, stored, metadata = read_safetensors(a.checkpoint)
    fmt = metadata.get("memgpt.format")
    if fmt not in ("1", "2"):
        sys.exit(f"{a.checkpoint}: not a memgpt checkpoint of format 1 or 2")
    config = json.loads(metadata["memgpt.config"])
    config.setdefault("dFF", 4 * config["dModel"])
    config.setdefault("specVersion", 1)  # format "1" predates the key: its models compute SPEC v1
    if not a.tokens:
        for name, t in tensors.items():
            print(f"{name}\t{stored[name]}\t{list(t.shape)}")
        print(json.dumps({"config": config}))
        return
    model = MemGPT(config)
    state = {torch_name(name): t.float() for name, t in tensors.items()}
    model.load_state_dict(state, strict=True)  # every parameter present, nothing extra, shapes equal
    with open(a.tokens) as f:
        ids = json.load(f)
    T = config["segmentLen"]
    if (len(ids) - 1) % T != 0 or len(ids) < T + 1:
        sys.exit(f"{a.tokens}: {len(ids)} tokens is not k*{T}+1")
    tokens = torch.tensor([ids], dtype=torch.long)
    with torch.no_grad():
        loss = model(tokens, (len(ids) - 1) // T)
    print(json.dumps({"loss": loss.item()}))


if __name__ == "__main__":
    main()
