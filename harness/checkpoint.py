"""Checkpoints: plain dicts of tensors and JSON-able values, written atomically.

A checkpoint loads with ``torch.load(path, weights_only=True)`` (no pickled classes, no code
runs on load) and rebuilds its model from its own ``config``; see ``docs/architecture.md``::

    {"format": "lowcurv-checkpoint/1", "model": state_dict, "config": model config,
     "train_config": dict, "epoch": int, "metrics": dict, "optimizer": dict,
     "scheduler": dict, "rng": dict, "best_val_robust_acc": float,
     "image_size": int (side of the training images; absent in older checkpoints),
     "run": {"id", "settings_sha256", "summary"} (the run's identity; absent in older ones)}

Every entry comes from a file, so :func:`load_checkpoint` walks the non-tensor entries once,
with a budget (:func:`check_bounded`), before anything else reads them: a list nested 60 levels
deep whose levels repeat one sub-list costs microseconds to refuse, not hours to compare.

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

from curvtools.checkpoint_paths import path_problem
from curvtools.checks import is_int
from curvtools.errors import BadInput, shown
from curvtools.fileio import write_bytes_atomic

FORMAT = "lowcurv-checkpoint/1"

# Bounds of the walk over a checkpoint's entries (tensors count as one value each). The deepest
# entry we write is 4 levels (optimizer state); a preactresnet18 checkpoint has ~1,000 values.
MAX_DEPTH = 16
MAX_VALUES = 200_000
MAX_INT_BITS = 256  # larger integers only come from a hostile file (str() of them is refused)
STRING_CHARS_PER_VALUE = 1024  # a long string costs one value per KiB

# The ``arch`` of the checkpoint config of a model passed to ``harness.fit``: no registered
# architecture, so nothing rebuilds it from the checkpoint alone.
USER_MODULE_ARCH = "user-module"


def shown_path(value: Any) -> str:
    """A path or dataset spec quoted whole (people need all of it) up to 1,000 characters,
    else bounded like any untrusted value (:func:`curvtools.errors.shown`)."""
    return repr(value) if isinstance(value, str) and len(value) <= 1000 else shown(value)


def shown_name(value: Any) -> str:
    """A name from a file (a class, an activation) as plain text when it is a short printable
    string, else quoted and bounded (:func:`curvtools.errors.shown`)."""
    if isinstance(value, str) and value.isprintable() and len(value) <= 200:
        return value
    return shown(value)


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
    """Load a checkpoint with ``weights_only=True`` and check its format and its size.

    Raises :class:`BadInput` (one line) when the file is missing or not a regular file,
    unreadable, not a checkpoint of this project, of another format version, or when an entry
    is nested or sized beyond :data:`MAX_DEPTH` / :data:`MAX_VALUES` (:func:`check_bounded`).
    """
    path = Path(path)
    where = f"checkpoint {str(path)!r}"
    problem = path_problem(path) or ("is a folder, not a checkpoint file" if path.is_dir()
                                     else None)
    if problem is not None:
        raise BadInput(f"{where} {problem}")
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
            raise BadInput(f"{where} cannot be read: it holds pickled code "
                           f"({shown(found.group(1))}); refused, loading it could run that "
                           f"code") from None
        raise BadInput(f"{where} cannot be read: not a torch file of tensors and plain values "
                       f"(the weights-only loader refused it)") from None
    except Exception as err:  # torch raises many kinds (pickle, zip, runtime, recursion)
        first_line = (str(err).strip().splitlines() or [""])[0]
        raise BadInput(f"{where} cannot be read ({type(err).__name__}: "
                       f"{shown(first_line, 200)})") from None
    if not isinstance(payload, dict) or "format" not in payload:
        raise BadInput(f"{str(path)!r} is not a lowcurv checkpoint (no 'format' field)")
    check_bounded(payload, where)
    if payload["format"] != FORMAT:
        raise BadInput(f"{where} has format {shown(payload['format'])}; this version reads "
                       f"{FORMAT!r}")
    for key in ("model", "config"):
        if key not in payload:
            raise BadInput(f"{where} lacks the {key!r} entry")
    # every reader treats these as mappings of names to values
    for key in ("model", "config", "train_config"):
        if key in payload and not isinstance(payload[key], Mapping):
            raise BadInput(f"{where} has a {key!r} entry of type "
                           f"{type(payload[key]).__name__}; allowed: a mapping of names to values")
    return payload


def check_bounded(payload: Mapping[str, Any], where: str, *, max_depth: int = MAX_DEPTH,
                  max_values: int = MAX_VALUES) -> None:
    """Refuse (:class:`BadInput` naming the entry) a payload whose entries nest deeper than
    ``max_depth`` or hold more than ``max_values`` values, before anything compares, formats
    or copies them.

    The walk counts every value each time it is reached: a sub-list shared by two parents
    (pickle keeps sharing) counts twice, as every later reader would walk it twice. A tensor is
    one value; a string one per :data:`STRING_CHARS_PER_VALUE` characters; an integer of more
    than :data:`MAX_INT_BITS` bits is refused. The work is at most ``max_values`` steps.
    """
    budget = max_values
    for entry, value in payload.items():
        name = entry if isinstance(entry, str) else shown(entry)
        stack = [(value, 0)]
        budget -= 1
        while stack:
            item, depth = stack.pop()
            if isinstance(item, torch.Tensor):
                continue
            if isinstance(item, str | bytes | bytearray):
                budget -= len(item) // STRING_CHARS_PER_VALUE
            elif is_int(item) and int(item).bit_length() > MAX_INT_BITS:
                raise BadInput(f"{where}: entry {name!r} holds an integer of "
                               f"{int(item).bit_length()} bits; allowed: at most {MAX_INT_BITS}")
            elif isinstance(item, Mapping | list | tuple | set | frozenset):
                children = (list(item.keys()) + list(item.values())
                            if isinstance(item, Mapping) else item)
                if children and depth >= max_depth:
                    raise BadInput(f"{where}: entry {name!r} is nested more than {max_depth} "
                                   f"levels deep; allowed: at most {max_depth}")
                budget -= len(children)
                if budget >= 0:
                    stack.extend((child, depth + 1) for child in children)
            if budget < 0:
                raise BadInput(f"{where}: entry {name!r} holds more than {max_values} values "
                               f"(shared parts counted each time they are reached); refused "
                               f"as no checkpoint of a run holds that many")


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
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else ""
        raise BadInput(f"{what} ({type(err).__name__}: {shown(detail, 200)})") from None


def _check_archive_crc(path: Path) -> None:
    """torch.load does not check the zip CRCs: flipped bits in a tensor would load silently."""
    if not zipfile.is_zipfile(path):
        return  # not a zip: torch.load reports it
    try:
        with zipfile.ZipFile(path) as archive:
            bad_member = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, ValueError) as err:
        raise BadInput(f"checkpoint {str(path)!r} is a damaged zip archive "
                       f"({type(err).__name__}: {shown(str(err), 200)})") from None
    if bad_member is not None:
        raise BadInput(f"checkpoint {str(path)!r} is corrupted: {shown(bad_member)} fails its "
                       f"CRC check (the file changed after it was written)")


# --- the model a checkpoint describes -------------------------------------------------------


def is_user_module_config(config: Any) -> bool:
    """True for the checkpoint ``config`` of a model trained by ``harness.fit``."""
    return isinstance(config, Mapping) and config.get("arch") == USER_MODULE_ARCH


def user_module_message(path: str | Path, config: Mapping[str, Any]) -> str:
    """The one line refusing to rebuild a ``harness.fit`` model from checkpoint ``path``."""
    return (f"checkpoint {str(path)!r} holds a model passed to harness.fit() (class "
            f"{shown_name(config.get('class', '?'))}): load its state_dict into that module in "
            f"Python, or register the architecture as a plugin")


def refuse_user_module(path: str | Path, config: Any) -> None:
    """BadInput (:func:`user_module_message`) when ``config`` is a ``harness.fit`` model's:
    the check of every function that rebuilds a model from a checkpoint config."""
    if is_user_module_config(config):
        raise BadInput(user_module_message(path, config))


# A model config's counts are checked against the weights before any model is built: a
# checkpoint claiming 10**9 input channels must not make us allocate for them.
MAX_MODEL_COUNT = 1_000_000


def check_model_fits(config: Mapping[str, Any], state: Any, where: str) -> None:
    """Refuse (:class:`BadInput`) a model ``config`` whose network would not take the weights
    ``state``, before building it for real: the network is built on the ``meta`` device (no
    memory, no random numbers) and its state_dict's names and shapes compared with ``state``'s.
    A huge width or class count thus costs nothing, and a registry network that cannot even be
    built on the meta device (sizes overflow) is refused. A plugin's network that cannot be
    built on the meta device is left to the real build and ``load_state_dict``."""
    from harness.models import build_model

    for key in ("num_classes", "in_channels"):
        value = config.get(key)
        if is_int(value) and not 0 < value <= MAX_MODEL_COUNT:
            raise BadInput(f"{where} has a bad model config: {key}={shown(value)}; allowed: "
                           f"an integer in [1, {MAX_MODEL_COUNT}]")
    if not isinstance(state, Mapping):
        raise BadInput(f"{where}: 'model' is a {type(state).__name__}, not a state_dict mapping")
    from curvtools.plugins import PluginUnavailable

    try:
        with torch.device("meta"):
            meta = build_model(config)
    except PluginUnavailable:
        raise  # the caller says which plugin is missing or not allowed
    except BadInput as err:
        raise BadInput(f"{where} has a bad model config: {err}") from None
    except Exception as err:  # noqa: BLE001 - a config from a file: any failure is one line
        if not _builtin_arch(config):
            return  # a plugin that cannot be built on meta: the real build will say
        first = (str(err).strip().splitlines() or [""])[0]
        raise BadInput(f"{where} has a bad model config: its network cannot be built "
                       f"({type(err).__name__}: {shown(first, 200)})") from None
    want = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
    have = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else None for k, v in state.items()}
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    wrong = [k for k in want if k in have and have[k] != want[k]]
    if missing or extra or wrong:
        first = (f"missing key {shown(missing[0])}" if missing else
                 f"unexpected key {shown(extra[0])}" if extra else
                 f"{shown(wrong[0])} has shape {have[wrong[0]]}, the config's network "
                 f"{want[wrong[0]]}")
        raise BadInput(f"{where}: 'model' does not match its model config ({first})")


def _builtin_arch(config: Mapping[str, Any]) -> bool:
    """The config names an architecture of the registry (not a plugin's)."""
    from harness.models import REGISTRY, resolve_arch

    try:
        spec, _ = resolve_arch(config.get("arch", "preactresnet18"))
    except Exception:  # noqa: BLE001 - unknown: not ours
        return False
    return any(spec is s for s in REGISTRY.values())


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the model of a checkpoint from the checkpoint alone.

    Returns ``(model, checkpoint)`` with the model on ``device``, in eval mode, taking [0, 1]
    pixels [B, C, H, W] and returning logits [B, num_classes]. Raises :class:`BadInput` (one
    line naming the file) for any checkpoint that does not rebuild.
    """
    from curvtools.plugins import PluginUnavailable
    from harness.models import build_model

    payload = load_checkpoint(path, map_location=device)
    where = f"checkpoint {str(path)!r}"
    refuse_user_module(path, payload["config"])
    try:
        check_model_fits(payload["config"], payload["model"], where)
    except PluginUnavailable as err:  # the config is fine; the plugin it names is not here
        raise BadInput(f"{where}: {err}") from None
    try:
        model = build_model(payload["config"])
    except PluginUnavailable as err:
        raise BadInput(f"{where}: {err}") from None
    except BadInput as err:
        raise BadInput(f"{where} has a bad model config: {err}") from None
    except Exception as err:  # noqa: BLE001 - a config from a file: any failure is one line
        raise BadInput(f"{where} has a bad model config ({type(err).__name__}: "
                       f"{shown(str(err), 200)})") from None
    load_state_checked(model, payload["model"],
                       f"{where}: 'model' does not match its model config")
    model.to(device)
    model.eval()
    return model, payload
