#!/usr/bin/env python3
"""PyTorch's softmax + topk on the logits bench_gpu_kernels wrote: the router's baseline.

Usage: torch_router_baseline.py LOGITS_FILE [EXPERTS] [TOPK]
Prints one "TORCH" line per shape with the mean time of softmax followed by topk, measured with
CUDA events over 50 runs after 5 warm-ups.
"""
import sys

import numpy as np
import torch


def time_us(fn, iters=50, warmup=5):
    for _ in range(warmup):
        fn()
    start = torch.cuda.Event(enable_timing=True)
    stop = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) * 1e3 / iters


def main():
    path = sys.argv[1]
    experts = int(sys.argv[2]) if len(sys.argv) > 2 else 256
    topk = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    logits = torch.from_numpy(np.fromfile(path, dtype=np.float32).reshape(-1, experts)).cuda()
    shapes = [("T=%d" % logits.shape[0], logits)]
    generator = torch.Generator(device="cuda").manual_seed(11)
    shapes.append(("T=65536", torch.randn(65536, experts, device="cuda", generator=generator)))
    for name, x in shapes:
        def softmax_topk():
            return torch.topk(torch.softmax(x, dim=-1), topk, dim=-1)
        print("TORCH router softmax+topk %s %.1f us" % (name, time_us(softmax_topk)), flush=True)


if __name__ == "__main__":
    main()
