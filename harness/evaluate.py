"""Clean and adversarial evaluation: per-epoch curves during training and ``harness eval``.

:func:`evaluate_robust` runs a model (eval mode) over a set of batches and returns mean
cross-entropy and accuracy, clean and under attack; sums stay on the device until the end.
:func:`evaluate_checkpoint` is ``harness eval``: it rebuilds the model from a checkpoint alone
and attacks its test set with any attack of the registry (:mod:`harness.attacks`; default our
PGD-20 with 5 restarts, the paper's reporting protocol).

Example::

    >>> result = evaluate_checkpoint("runs/relu-cifar10/best.pt", n=1000)
    >>> result["clean_acc"], result["robust_acc"]
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from curvtools.checks import is_int, is_number
from curvtools.errors import SEED_LIMIT, BadInput, check_seed
from harness.attacks import (
    Attack,
    ThreatModel,
    attack_loss,
    autocast,
    make_attack,
    normalize_norm_name,
    reporting_restarts,
    uses_batch_statistics,
)
from harness.distributed import DistContext, all_reduce_sum, broadcast_buffers

# Where ``harness eval`` takes its images: the test set, or a run's own training/validation images.
EVAL_SPLITS = ("test", "train", "val")

# More than this share of examples with an exactly zero input gradient means a gradient attack
# cannot move them (sign(0) = 0): robust accuracy is then an overestimate (gradient masking).
ZERO_GRADIENT_WARN_SHARE = 0.10
ZERO_GRADIENT_MIN_CORRECT = 10  # fewer correct examples bound the overestimate anyway


class GradientMaskingWarning(UserWarning):
    """Many examples have an exactly zero input gradient: PGD's robust accuracy is not to be
    trusted."""


def _batches_of(batches: Any) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """``DeviceBatches`` in stored order (no augmentation), or any iterable of (x, y)."""
    return batches.in_order() if hasattr(batches, "in_order") else batches


def zero_input_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                         autocast_dtype: torch.dtype | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(zero, correct)``: device tensors (no host sync) counting the correctly classified
    examples of ``x`` [B, C, H, W] whose cross-entropy input gradient is exactly zero, and all
    correctly classified ones. Only those matter: a misclassified example is never robust, and
    its gradient (p - onehot) cannot vanish."""
    with torch.enable_grad():
        x = x.detach().float().requires_grad_(True)
        with autocast(x.device.type, autocast_dtype):
            logits = model(x)
        # the gradient the attack sees, up to a positive factor per example
        loss, _ = attack_loss(logits.float(), y, autocast_dtype, uses_batch_statistics(model))
        (grad,) = torch.autograd.grad(loss, x)
    correct = logits.detach().argmax(1) == y
    zero = grad.flatten(1).abs().amax(1) == 0
    return (zero & correct).sum(), correct.sum()


def _stats(model: nn.Module, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor,
           autocast_dtype: torch.dtype | None) -> torch.Tensor:
    """Summed clean loss, clean correct, summed robust loss, robust correct (float64 [4])."""
    with torch.no_grad(), autocast(x.device.type, autocast_dtype):
        clean_logits = model(x).float()
        robust_logits = model((x + delta).clamp(0.0, 1.0)).float()
    return torch.stack([
        F.cross_entropy(clean_logits, y, reduction="sum").double(),
        (clean_logits.argmax(1) == y).sum().double(),
        F.cross_entropy(robust_logits, y, reduction="sum").double(),
        (robust_logits.argmax(1) == y).sum().double()])


def _batch_stats(model: nn.Module, attack: Attack, autocast_dtype: torch.dtype | None,
                 x: torch.Tensor, y: torch.Tensor, *starts: torch.Tensor) -> torch.Tensor:
    """``attack`` from the given starts, then :func:`_stats`."""
    delta = attack.perturb(model, x, y, *starts, autocast_dtype=autocast_dtype)
    return _stats(model, x, y, delta, autocast_dtype)


def evaluate_robust(model: nn.Module, batches: Any, attack: Attack, *,
                    generator: torch.Generator | None = None,
                    autocast_dtype: torch.dtype | None = None,
                    rows_of_batch: Callable[[], tuple[int, int, int]] | None = None,
                    on_batch: Callable[[], None] | None = None,
                    graph_cache: dict | None = None,
                    masking_check: bool = True) -> dict[str, float]:
    """Clean and robust loss/accuracy of ``model`` (put in eval mode) over ``batches``.

    ``batches``: a ``harness.data.DeviceBatches`` (served in order, unaugmented) or an iterable
    of (x [B, C, H, W] in [0, 1], y [B]). ``attack``: from the registry
    (:func:`harness.attacks.make_attack`); its random starts come from ``generator``
    (``rows_of_batch()``: data parallel, see :meth:`harness.attacks.pgd_attack.PGD.starts`).
    Returns ``{"clean_loss", "clean_acc", "robust_loss", "robust_acc", "n",
    "zero_grad_share"}`` (accuracies are fractions; losses mean cross-entropy). The model's
    train/eval mode is restored afterwards. ``zero_grad_share``: the share of the first batch's
    correctly classified examples whose input gradient is exactly zero (one extra backward per
    call); above :data:`ZERO_GRADIENT_WARN_SHARE` (of at least
    :data:`ZERO_GRADIENT_MIN_CORRECT` examples) a :class:`GradientMaskingWarning` is issued.
    ``masking_check=False`` skips that backward (``zero_grad_share`` is then None): training's
    per-epoch evaluation, which records only the four metrics, would otherwise spend a sixth of
    its time on it. The metrics do not depend on it (it draws no random numbers and changes no
    state).
    ``graph_cache``: a dict kept by the caller across calls; on CUDA the per-batch attack and
    forwards of a ``graphable`` attack are then replayed from a CUDA graph
    (:class:`harness.graphs.GraphedStep`) that later calls with the same model and attack
    reuse (``harness train`` evaluates every epoch).
    """
    batch_stats = functools.partial(_batch_stats, model, attack, autocast_dtype)
    if graph_cache is not None and attack.graphable:
        from harness.graphs import GraphedStep

        # the model itself (not its id) in the key: a cached graph keeps its model alive
        key = (model, attack.name, attack.threat, autocast_dtype,
               getattr(attack, "early_stop", False))
        batch_stats = graph_cache.setdefault(key, GraphedStep(batch_stats))

    was_training = model.training
    model.eval()
    sums = None
    n = 0
    zero_grads = checked = None
    for x, y in _batches_of(batches):
        if sums is None:
            sums = torch.zeros(4, device=x.device, dtype=torch.float64)
            if masking_check:
                zero_grads, checked = zero_input_gradients(model, x, y, autocast_dtype)
        starts = attack.starts(x, generator, rows_of_batch() if rows_of_batch else None)
        sums += batch_stats(x, y, *starts)
        n += y.shape[0]
        if on_batch is not None:
            on_batch()
    model.train(was_training)
    if n == 0:
        raise BadInput("evaluation set is empty")
    clean_loss, clean_acc, robust_loss, robust_acc = (sums / n).tolist()
    if not masking_check:
        return {"clean_loss": clean_loss, "clean_acc": clean_acc, "robust_loss": robust_loss,
                "robust_acc": robust_acc, "n": n, "zero_grad_share": None}
    checked = int(checked)
    zero_grad_share = int(zero_grads) / checked if checked else 0.0
    if zero_grad_share > ZERO_GRADIENT_WARN_SHARE and checked >= ZERO_GRADIENT_MIN_CORRECT:
        warnings.warn(f"{100 * zero_grad_share:.0f}% of {checked} correctly classified examples "
                      f"checked have an exactly zero input gradient: gradient attacks cannot "
                      f"move them, so robust accuracy ({100 * robust_acc:.1f}%) is likely "
                      f"overestimated (gradient masking)", GradientMaskingWarning, stacklevel=2)
    return {"clean_loss": clean_loss, "clean_acc": clean_acc, "robust_loss": robust_loss,
            "robust_acc": robust_acc, "n": n, "zero_grad_share": zero_grad_share}


# --- data parallel: sharded evaluation ----------------------------------------------------------


class _RowShards:
    """Rows ``rank::world_size`` of every in-order evaluation batch; remembers the batch size."""

    def __init__(self, batches: Any, ctx: DistContext):
        self.batches, self.ctx = batches, ctx
        self.batch_rows = 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        whole = self.batches.in_order() if hasattr(self.batches, "in_order") else self.batches
        for x, y in whole:
            self.batch_rows = int(y.shape[0])
            yield x[self.ctx.rank::self.ctx.world_size], y[self.ctx.rank::self.ctx.world_size]


def evaluate_sharded(model: nn.Module, batches: Any, ctx: DistContext, attack: Any, *,
                     generator: torch.Generator | None = None,
                     autocast_dtype: torch.dtype | None = None,
                     on_batch: Callable[[], None] | None = None,
                     graph_cache: dict | None = None,
                     masking_check: bool = True) -> dict[str, float]:
    """``harness.evaluate.evaluate_robust`` split over ranks, with the same result.

    Every rank holds the whole set; rank ``r`` evaluates rows ``r::world_size`` of each batch,
    attacking (``attack``, from :func:`harness.attacks.make_attack`) with the random starts one
    process would draw for that batch, and the loss and correct-count sums are all-reduced.
    Returns ``{"clean_loss", "clean_acc", "robust_loss", "robust_acc", "n"}`` over the whole
    set, identical on every rank. Rank 0's BatchNorm running statistics are broadcast first so
    all ranks evaluate the model that is saved.
    """
    if not ctx.enabled:
        return evaluate_robust(model, batches, attack, generator=generator,
                               autocast_dtype=autocast_dtype, on_batch=on_batch,
                               graph_cache=graph_cache, masking_check=masking_check)
    broadcast_buffers(model, ctx)
    shards = _RowShards(batches, ctx)
    local = evaluate_robust(model, shards, attack, generator=generator,
                            autocast_dtype=autocast_dtype, on_batch=on_batch,
                            masking_check=masking_check,
                            rows_of_batch=lambda: (ctx.rank, ctx.world_size, shards.batch_rows))
    keys = ("clean_loss", "clean_acc", "robust_loss", "robust_acc")
    device = next(model.parameters()).device
    sums = torch.tensor([local[k] * local["n"] for k in keys] + [local["n"]],
                        dtype=torch.float64, device=device)
    sums = all_reduce_sum(sums, ctx).tolist()
    n = sums[-1]
    return {**{k: s / n for k, s in zip(keys, sums[:-1], strict=True)}, "n": int(round(n))}


def evaluate_checkpoint(ckpt: str | Path, *, n: int | None = None, steps: int = 20,
                        restarts: int | None = None, eps_255: float | None = None,
                        alpha_255: float | None = None, norm: str | None = None,
                        attack: str = "pgd", device: str = "auto",
                        batch_size: int = 256, seed: int = 0, precision: str = "fp32",
                        dataset: str | None = None, data_dir: str | None = None,
                        split: str = "test", explicit: Iterable[str] = (),
                        on_batch: Callable[[], None] | None = None,
                        on_start: Callable[[int, Attack, int], None] | None = None
                        ) -> dict[str, Any]:
    """``harness eval``: clean and robust accuracy of a checkpoint on its test set (or, with
    ``split="train"``/``"val"``, on the training/validation images its run used).

    The model comes from the checkpoint alone; the data from its ``train_config`` (``dataset``,
    ``data_dir`` override it), and so do the threat model's ``norm``, ``eps_255`` and
    ``alpha_255`` when not given (else l_inf, 8 and 2, the paper's). ``split``: ``"test"``, or
    ``"train"``/``"val"``: the run's own training/validation images (its split and subsets,
    :func:`harness.run_data.split_indices`; unaugmented), for a like-for-like gap between the
    images a model was trained on and unseen ones. ``n`` images of the split (a class-balanced
    subset drawn with the run's split seed; all when None). ``restarts``: None
    is the attack's reporting default (5 for ``pgd``, the paper's PGD-20 x 5; 1 for the
    others). ``attack``: a name of the registry (:func:`harness.attacks.make_attack`);
    ``explicit``: the threat-model fields
    the user set (``steps``, ``restarts``, ``eps``, ``step``, ``norm``), refused when the
    attack does not use them. ``on_start(num_batches, attack, num_images)`` is called before the
    work starts and ``on_batch()`` after each batch (a progress bar). Returns a JSON-able dict
    with the settings and ``clean_acc``, ``robust_acc``, losses.
    """
    from harness.checkpoint import load_model
    from harness.data import DeviceBatches, stratified_subset
    from harness.datasets import open_source
    from harness.run_data import indices_hash
    from harness.runtime import autocast_dtype_for, precision_name, resolve_device

    if split not in EVAL_SPLITS:
        raise BadInput(f"--split {split!r}; allowed: {', '.join(EVAL_SPLITS)}")
    if restarts is None:
        restarts = reporting_restarts(attack)
    _check_eval_numbers(n, steps, restarts, eps_255, alpha_255, batch_size, precision, seed)
    dev = resolve_device(device)
    model, payload = load_model(ckpt, device=dev)
    train_config = payload.get("train_config") or {}
    norm = normalize_norm_name(norm or train_config.get("norm", "linf"))
    eps_255 = _run_number(eps_255, train_config, "eps_255", 8.0)
    alpha_255 = _run_number(alpha_255, train_config, "alpha_255", 2.0)
    _check_eval_numbers(n, steps, restarts, eps_255, alpha_255, batch_size, precision)
    threat = ThreatModel.from_255(eps_255=eps_255, step_255=alpha_255, norm=norm, steps=steps,
                                  restarts=restarts, bn_mode="eval")
    run = _run_data_settings(train_config)
    spec = dataset or run["dataset"]
    if not spec:
        raise BadInput("the checkpoint names no dataset; pass --dataset")
    source = open_source(spec, data_dir or run["data_dir"], run["download"])
    check_source_fits(source, spec, payload, run["dataset"])
    chosen = make_attack(attack, threat, num_classes=source.num_classes, seed=seed,
                         explicit=explicit)
    part = "test" if split == "test" else "train"  # the source's part the images come from
    labels = source.labels(part)
    if split == "test":
        idx = torch.arange(len(labels)).numpy()
    else:
        from harness.run_data import split_indices

        idx = split_indices(source.labels("train"), source.labels("test"),
                            val_fraction=run["val_fraction"], split_seed=run["split_seed"],
                            train_subset=run["train_subset"],
                            val_subset=run["val_subset"])[split]
    if n is not None and n < len(idx):
        idx = stratified_subset(labels, idx, n, run["split_seed"])
    batches = DeviceBatches(source.images(part, idx), labels[idx], dev, batch_size=batch_size)
    if on_start is not None:
        on_start(len(batches.images) // batch_size + bool(len(batches.images) % batch_size),
                 chosen, len(idx))
    amp = autocast_dtype_for(precision, dev)
    generator = torch.Generator(device=dev).manual_seed(seed)
    started = time.perf_counter()
    result = evaluate_robust(model, batches, chosen, generator=generator, autocast_dtype=amp,
                             on_batch=on_batch,
                             graph_cache={} if dev.type == "cuda" else None)
    uses = chosen.honours
    return {"checkpoint": str(ckpt), "epoch": payload.get("epoch"), "dataset": spec,
            "split": split, "indices_sha256": indices_hash(idx), "attack": attack, "norm": norm,
            "eps_255": eps_255,
            "alpha_255": alpha_255 if "step" in uses else None,
            "steps": steps if "steps" in uses else None,
            "restarts": restarts if "restarts" in uses else 1, "seed": seed,
            "precision": precision_name(amp), "device": str(dev),
            "seconds": round(time.perf_counter() - started, 3), **result}


def _run_data_settings(train_config: Mapping[str, Any]) -> dict[str, Any]:
    """The data settings ``harness eval`` reads from a checkpoint's ``train_config``, checked
    (a hand-edited or foreign checkpoint may hold anything)."""
    out = {"dataset": train_config.get("dataset"),
           "data_dir": train_config.get("data_dir") or "data",
           "download": train_config.get("download", True),
           "split_seed": train_config.get("split_seed", 0),
           "val_fraction": train_config.get("val_fraction", 0.1),
           **{k: train_config.get(k) for k in ("train_subset", "val_subset")}}
    seed = out["split_seed"]

    def subset_ok(v: Any) -> bool:
        return v is None or (is_int(v) and v >= 1)

    problems = {
        "val_fraction": (is_number(out["val_fraction"]) and 0 < out["val_fraction"] < 1,
                         "a number in (0, 1)"),
        "train_subset": (subset_ok(out["train_subset"]), "a positive integer or null"),
        "val_subset": (subset_ok(out["val_subset"]), "a positive integer or null"),
        "dataset": (out["dataset"] is None or isinstance(out["dataset"], str), "a dataset name"),
        "data_dir": (isinstance(out["data_dir"], str), "a folder path"),
        "download": (isinstance(out["download"], bool), "true or false"),
        "split_seed": (is_int(seed) and 0 <= seed < SEED_LIMIT, "an integer in [0, 2**63)")}
    for key, (ok, allowed) in problems.items():
        if not ok:
            raise BadInput(f"the checkpoint's train_config has {key}={out[key]!r}; "
                           f"allowed: {allowed}")
    return out


def check_source_fits(source: Any, spec: str, payload: Mapping[str, Any],
                      trained_on: str | None) -> None:
    """Raise BadInput when the images of ``source`` (dataset ``spec``) are not what the
    checkpoint's model was trained on: channels, classes or image size differ.

    Channels and classes come from the model config; the image size from the checkpoint's
    ``image_size`` (recorded since this check exists), else from the training dataset's name
    (``trained_on``). A mismatch would otherwise give a traceback (channels, too few classes)
    or, worse, a meaningless accuracy (a 32px model on 16px images).
    """
    from harness.datasets import known_image_size, open_source

    config = payload["config"]
    want = {"channels": int(config.get("in_channels", 3)),
            "classes": int(config.get("num_classes", 10)),
            "image size": payload.get("image_size")}
    if not is_int(want["image size"]):
        want["image size"] = None  # not recorded (or garbled): from the dataset name below
    if want["image size"] is None and isinstance(trained_on, str):
        key = trained_on.strip().lower()
        if known_image_size(trained_on) is not None:
            want["image size"] = known_image_size(trained_on)
        elif key != spec.strip().lower():  # another image folder: its first image tells
            with contextlib.suppress(BadInput, OSError):
                want["image size"] = open_source(trained_on).image_size
    have = {"channels": source.in_channels, "classes": source.num_classes,
            "image size": source.image_size}
    bad = [k for k in have if want[k] is not None and have[k] != want[k]]
    if bad:
        def describe(values):
            words = {"channels": "{} channels", "classes": "{} classes",
                     "image size": "{0}x{0} images"}
            return ", ".join(words[k].format(values[k]) for k in bad)

        origin = f" (trained on {trained_on})" if trained_on else ""
        raise BadInput(f"dataset {spec!r} has {describe(have)}; the checkpoint's model takes "
                       f"{describe(want)}{origin}")


def _run_number(given: float | None, train_config: dict, key: str, default: float) -> float:
    """``given``, else the run's setting (from the checkpoint), else ``default``."""
    if given is not None:
        return given
    value = train_config.get(key, default)
    if not is_number(value):
        option = "--" + key.replace("_", "-")
        raise BadInput(f"the checkpoint's {key}={value!r} is not a number; pass {option}")
    return float(value)


def _check_eval_numbers(n, steps, restarts, eps_255, alpha_255, batch_size, precision,
                        seed=0) -> None:
    """Raise BadInput for the first bad number (``eps_255``, ``alpha_255``: None is the run's)."""
    if n is not None and n < 1:
        raise BadInput(f"--n {n} must be >= 1")
    if steps < 1:
        raise BadInput(f"--steps {steps} must be >= 1")
    if restarts < 1:
        raise BadInput(f"--restarts {restarts} must be >= 1")
    if eps_255 is not None and not 0 <= eps_255 < math.inf:
        raise BadInput(f"--eps-255 {eps_255} must be a finite number >= 0")
    if alpha_255 is not None and not 0 < alpha_255 < math.inf:
        raise BadInput(f"--alpha-255 {alpha_255} must be a finite number > 0")
    if batch_size < 1:
        raise BadInput(f"--batch-size {batch_size} must be >= 1")
    check_seed("--seed", seed)
    if precision not in ("fp32", "bf16", "fp16", "auto"):
        raise BadInput(f"--precision {precision!r}; allowed: fp32, bf16, fp16, auto")
