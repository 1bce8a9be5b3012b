"""The timing protocol of the PyTorch side of `kiln bench` (scripts/bench/torch_reference.py and
torch_flow_reference.py): one first call timed on its own, then N timed calls, each followed by a
device synchronisation; the peak memory over every call and over the timed calls alone (after
the first use, CUDA's peak is reset and on the CPU the peak-RSS mark is cleared), as kiln bench
measures it."""

import time

import torch


class Timer:
    def __init__(self, cuda):
        self.cuda = cuda
        self.sync = torch.cuda.synchronize if cuda else (lambda: None)
        self.peak = 0
        self.steady = 0
        if cuda:
            torch.cuda.reset_peak_memory_stats()

    def peak_now(self):
        if self.cuda:
            return torch.cuda.max_memory_allocated()
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))

    def timed(self, fn, iters):
        """`fn`'s first call and the mean/min/max of `iters` more, in kiln bench's JSON fields."""
        def once():
            start = time.perf_counter()
            with torch.no_grad():
                out = fn()
            self.sync()
            del out
            return time.perf_counter() - start
        first = once()
        self.peak = max(self.peak, self.peak_now())
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        times = [once() for _ in range(max(iters, 1))]
        self.steady = max(self.steady, self.peak_now())
        self.peak = max(self.peak, self.steady)
        return dict(mean_s=sum(times) / len(times), min_s=min(times), max_s=max(times), iters=len(times), first_use_s=first)
