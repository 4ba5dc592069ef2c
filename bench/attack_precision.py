"""How closely the attack under bf16 and fp16 autocast follows the fp32 attack; prints JSON.

For BatchNorm in eval mode (evaluation) and in train mode (the training attack), PGD-10 at
eps 8/255 from the same random starts, in fp32, bf16 and fp16: the share of perturbation entries
equal to fp32's, and the robust accuracy (eval-mode model) each attack leaves. The baseline in the
same run, ``fp16_per_example``, is fp16 with each example's loss scaled on its own even when
BatchNorm couples the batch (what ``harness.attacks.attack_loss`` did before it scaled a coupled
batch as one): in train mode every example's input gradient then mixes the other examples'
terms in the wrong proportions.

The model is a small PreActResNet-18 trained for a few clean steps on scikit-learn's digits
(embedded, offline), so that some examples are confidently classified::

    python bench/attack_precision.py                  # CPU, 128 images, width 1/8 (~40 s)
    python bench/attack_precision.py --device cuda --n 512 --width 1

``--runs VARIANT`` instead trains short adversarial runs (digits, width 1/8, 4 epochs, PGD-5 at
eps 32/255, seeds 0, 1, 2; fp32, fp16 or fp16_per_example) and prints each run's final
accuracies, one JSON line per run (fp16 on a CPU: about 2.5 minutes per run)::

    python bench/attack_precision.py --runs fp32 --out /tmp/precision_runs
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

VARIANTS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16,
            "fp16_per_example": torch.float16}


def _digits_model(n: int, width: float, train_steps: int, device: torch.device):
    from harness.datasets import open_source
    from harness.models import build_model, model_config

    source = open_source("digits")
    x = (source.images("train", list(range(n))).float() / 255).to(device)
    y = torch.as_tensor(source.labels("train")[:n]).to(device)
    torch.manual_seed(0)
    net = build_model(model_config(width=width, in_channels=x.shape[1])).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for _ in range(train_steps):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net, x, y


@contextlib.contextmanager
def _attack_of(variant: str) -> Iterator[None]:
    """The attack of ``variant``: ``fp16_per_example`` scales every example on its own even
    when BatchNorm couples the batch (the scaling before the correction); the others as is."""
    import harness.attacks.pgd_attack as attacks  # the module whose pgd() calls it

    saved = attacks.uses_batch_statistics
    if variant == "fp16_per_example":
        attacks.uses_batch_statistics = lambda module: False
    try:
        yield
    finally:
        attacks.uses_batch_statistics = saved


def compare_attack_precisions(n: int = 128, width: float = 0.125, train_steps: int = 25,
                              steps: int = 10, device: str = "cpu") -> dict[str, Any]:
    """Per BatchNorm mode and variant: share of delta entries equal to fp32's, robust accuracy."""
    from harness.attacks import ThreatModel, make_attack

    dev = torch.device(device)
    net, x, y = _digits_model(n, width, train_steps, dev)
    out: dict[str, Any] = {"n": n, "width": width, "clean_train_steps": train_steps,
                           "pgd_steps": steps, "device": str(dev), "torch": torch.__version__}
    for bn_mode in ("eval", "train"):
        deltas = {}
        for name, dtype in VARIANTS.items():
            model = copy.deepcopy(net)  # a train-mode attack moves running statistics
            attack = make_attack("pgd", ThreatModel.from_255(eps_255=8, step_255=2,
                                                             steps=steps, bn_mode=bn_mode))
            starts = attack.starts(x, torch.Generator(device=dev).manual_seed(1))
            with _attack_of(name):
                deltas[name] = attack.perturb(model, x, y, *starts, autocast_dtype=dtype)
        net.eval()
        with torch.no_grad():
            out[bn_mode] = {
                name: {"equal_to_fp32": round((d == deltas["fp32"]).float().mean().item(), 4),
                       "robust_acc": round((net(x + d).argmax(1) == y).float().mean().item(), 4)}
                for name, d in deltas.items()}
    return out


RUN_SETTINGS = dict(dataset="digits", width=0.125, batch_size=32, augment=False,
                    test_subset=300, lr=0.05, eps_255=32, alpha_255=8, train_steps=5,
                    eval_steps=10, lr_milestones=None, epochs=4)


def short_runs(variant: str, out: Path, device: str = "cpu", seeds=(0, 1, 2)):
    """Yield each seed's final metrics after a short adversarial run in ``variant``."""
    import time

    from harness.config import TrainConfig
    from harness.runtime import precision_name
    from harness.train import run_training

    precision = precision_name(VARIANTS[variant])
    with _attack_of(variant):
        for seed in seeds:
            started = time.perf_counter()
            cfg = TrainConfig.from_dict(RUN_SETTINGS | {"precision": precision, "seed": seed,
                                                        "device": device})
            last = run_training(cfg, out / f"{variant}-{seed}", overwrite=True,
                                progress=False)[-1]
            yield {"variant": variant, "seed": seed,
                   "seconds": round(time.perf_counter() - started, 1),
                   **{k: round(last[k], 4) for k in ("train_robust_acc", "val_robust_acc",
                                                     "test_clean_acc", "test_robust_acc")}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=128, help="digits training images attacked")
    parser.add_argument("--width", type=float, default=0.125, help="PreActResNet-18 width")
    parser.add_argument("--train-steps", type=int, default=25, help="clean SGD steps first")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--runs", choices=("fp32", "fp16", "fp16_per_example"), default=None,
                        help="train short runs in this variant instead (see above)")
    parser.add_argument("--out", type=Path, default=Path("precision_runs"),
                        help="run directories of --runs (replaced)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.runs is not None:
        for row in short_runs(args.runs, args.out, args.device):
            print(json.dumps(row), flush=True)
        return
    print(json.dumps(compare_attack_precisions(args.n, args.width, args.train_steps,
                                               device=args.device), indent=2))


if __name__ == "__main__":
    main()
