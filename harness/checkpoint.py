"""Checkpoints: plain dicts of tensors and JSON-able values, written atomically.

A checkpoint loads with ``torch.load(path, weights_only=True)`` (no pickled classes, no code
runs on load) and rebuilds its model from its own ``config``; see ``docs/architecture.md``::

    {"format": "lowcurv-checkpoint/1", "model": state_dict, "config": model config,
     "train_config": dict, "epoch": int, "metrics": dict, "optimizer": dict,
     "scheduler": dict, "rng": dict, "best_val_robust_acc": float,
     "image_size": int (side of the training images; absent in older checkpoints)}

Example::

    >>> model, ckpt = load_model("runs/relu-cifar10/best.pt")
    >>> ckpt["epoch"], ckpt["metrics"]["val_robust_acc"]
"""

from __future__ import annotations

import io
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from curvtools.errors import BadInput
from curvtools.fileio import write_bytes_atomic

FORMAT = "lowcurv-checkpoint/1"

def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically.

    The bytes go through :func:`curvtools.fileio.write_bytes_atomic` (a fsynced temporary file
    in the same folder, renamed over ``path``): a crash leaves either the old file or the new
    one, never a torn one. ``payload["format"]`` is set to :data:`FORMAT` when missing.
    """
    path = Path(path)
    payload = dict(payload)
    payload.setdefault("format", FORMAT)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` and check its format.

    Raises :class:`BadInput` (one line) when the file is missing, unreadable, not a checkpoint
    of this project, or of another format version.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"checkpoint {str(path)!r} does not exist")
    _check_archive_crc(path)
    try:
        # torch warns about odd files before refusing them; the refusal alone is the one line
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            payload = torch.load(path, map_location=map_location, weights_only=True)
        for warning in caught:
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno)
    except pickle.UnpicklingError as err:
        # torch's own message advises weights_only=False, which would run the file's code
        found = re.search(r"GLOBAL (\S+)", str(err))
        if found:
            raise BadInput(f"checkpoint {str(path)!r} cannot be read: it holds pickled code "
                           f"({found.group(1)}); refused, loading it could run that code") \
                from None
        raise BadInput(f"checkpoint {str(path)!r} cannot be read: not a torch file of tensors "
                       f"and plain values (the weights-only loader refused it)") from None
    except Exception as err:  # torch raises many kinds (pickle, zip, runtime)
        first_line = (str(err).strip().splitlines() or [""])[0][:200]
        raise BadInput(f"checkpoint {str(path)!r} cannot be read "
                       f"({type(err).__name__}: {first_line})") from None
    if not isinstance(payload, dict) or "format" not in payload:
        raise BadInput(f"{str(path)!r} is not a lowcurv checkpoint (no 'format' field)")
    if payload["format"] != FORMAT:
        raise BadInput(f"checkpoint {str(path)!r} has format {payload['format']!r}; "
                       f"this version reads {FORMAT!r}")
    for key in ("model", "config"):
        if key not in payload:
            raise BadInput(f"checkpoint {str(path)!r} lacks the {key!r} entry")
    # every reader treats these as mappings of names to values
    for key in ("model", "config", "train_config"):
        if key in payload and not isinstance(payload[key], Mapping):
            raise BadInput(f"checkpoint {str(path)!r} has a {key!r} entry of type "
                           f"{type(payload[key]).__name__}; allowed: a mapping of names to values")
    return payload


def load_state_checked(target: Any, state: Any, what: str) -> None:
    """``target.load_state_dict(state)`` (a module, optimizer or grad scaler), with any refusal
    turned into one :class:`BadInput` line that starts with ``what`` (e.g. "checkpoint 'x.pt':
    'model' does not match its model config") and adds torch's reason.

    torch raises RuntimeError (missing keys, shape mismatch), TypeError (not a mapping),
    KeyError or ValueError (an optimizer state of the wrong form).
    """
    if not isinstance(state, Mapping):
        raise BadInput(f"{what}: it is a {type(state).__name__}, not a state_dict mapping")
    try:
        target.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError, KeyError, IndexError, AttributeError) as err:
        # torch's first line often only names the class; the second names the first bad key
        lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
        detail = (lines[1] if len(lines) > 1 else lines[0] if lines else "")[:200]
        raise BadInput(f"{what} ({type(err).__name__}: {detail})") from None


def _check_archive_crc(path: Path) -> None:
    """torch.load does not check the zip CRCs: flipped bits in a tensor would load silently."""
    if not zipfile.is_zipfile(path):
        return  # not a zip: torch.load reports it
    try:
        with zipfile.ZipFile(path) as archive:
            bad_member = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, ValueError) as err:
        raise BadInput(f"checkpoint {str(path)!r} is a damaged zip archive "
                       f"({type(err).__name__}: {err})") from None
    if bad_member is not None:
        raise BadInput(f"checkpoint {str(path)!r} is corrupted: {bad_member!r} fails its CRC "
                       f"check (the file changed after it was written)")


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the model of a checkpoint from the checkpoint alone.

    Returns ``(model, checkpoint)`` with the model on ``device``, in eval mode, taking [0, 1]
    pixels [B, C, H, W] and returning logits [B, num_classes].
    """
    from harness.models import build_model

    payload = load_checkpoint(path, map_location=device)
    from harness.rundir import refuse_user_module

    refuse_user_module(path, payload.get("config"))
    from curvtools.plugins import PluginUnavailable

    try:
        model = build_model(payload["config"])
    except PluginUnavailable as err:  # the config is fine; the plugin it names is not here
        raise BadInput(f"checkpoint {str(path)!r}: {err}") from None
    except BadInput as err:
        raise BadInput(f"checkpoint {str(path)!r} has a bad model config: {err}") from None
    load_state_checked(model, payload["model"],
                       f"checkpoint {str(path)!r}: 'model' does not match its model config")
    model.to(device)
    model.eval()
    return model, payload
