"""The reference side of :class:`bench.reference_process.RemoteReference`, in its own process.

Reads one request line (``{"kind": "train" | "eval", "images": {...}, "kwargs": {...}}``),
rebuilds the images with :func:`bench.train_throughput.bench_images`, and answers as
:mod:`bench.reference_process` describes. Run as ``python -m bench.reference_worker`` by it.
"""

from __future__ import annotations

import json
import sys


def serve() -> None:
    import torch

    from bench.train_throughput import ReferenceTrainSession, bench_images

    request = json.loads(sys.stdin.readline())
    threads = request["kwargs"].pop("threads", None)
    if threads:
        torch.set_num_threads(int(threads))
    images, labels, _ = bench_images(**request["images"])
    if request["kind"] == "eval":
        from bench.eval_throughput import reference_eval_throughput

        print(json.dumps(reference_eval_throughput(images, labels, **request["kwargs"])),
              flush=True)
        return
    session = ReferenceTrainSession(images, labels, **request["kwargs"])
    print(json.dumps({"warmup_seconds": session.warmup_seconds,
                      "settings": session.settings}), flush=True)
    for line in sys.stdin:
        if json.loads(line) == "chunk":
            print(json.dumps({"seconds": session.time_chunk()}), flush=True)


if __name__ == "__main__":
    serve()
