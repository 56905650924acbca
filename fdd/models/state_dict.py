"""Reading weight files safely: safetensors, or weights-only pickles, never arbitrary code."""

from __future__ import annotations

import json
import os
import struct
from typing import Mapping

import torch

from .errors import ModelLoadError

SAFETENSORS_EXT = (".safetensors", ".sft")
PICKLE_EXT = (".ckpt", ".pt", ".pth", ".bin")

#: keys under which trainers nest the real weights in a pickle / safetensors file
_NESTING_KEYS = ("state_dict", "model", "module", "params_ema")



def read_json_file(path: str | os.PathLike, expected: str | None = None, report_as: str | os.PathLike | None = None):
    """The parsed JSON of a model's config file; an unreadable or malformed file is a
    :class:`ModelLoadError` naming ``report_as`` (default: the file) and what was ``expected``."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(report_as if report_as is not None else path,
                             f"{os.path.basename(os.fspath(path))} is not readable JSON ({exc}).", expected) from exc

def _check_safetensors_header(path: str) -> None:
    """Validate the header and the data length of a safetensors file before loading it.

    safetensors' own error for a truncated file is terse; this names the file and the sizes.
    """
    size = os.path.getsize(path)
    if size < 8:
        raise ModelLoadError(path, f"the file is {size} bytes long, too short to be safetensors.",
                             "a complete .safetensors file")
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        if n <= 0 or 8 + n > size:
            raise ModelLoadError(path, "the safetensors header is corrupt or the file is truncated "
                                 f"(header claims {n} bytes, file has {size}).",
                                 "a complete .safetensors file; download it again")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelLoadError(path, f"the safetensors header is not valid JSON ({exc}).",
                                 "a complete .safetensors file") from exc
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise ModelLoadError(path, f"tensor entry {name!r} in the header is malformed.",
                                 "a complete .safetensors file") from exc
    if 8 + n + end > size:
        raise ModelLoadError(path, f"the file is truncated: its tensors need {8 + n + end} bytes "
                             f"but the file has {size}.", "a complete .safetensors file; download it again")


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Return the ``__metadata__`` dict of a safetensors file ({} if none)."""
    path = os.fspath(path)
    _check_safetensors_header(path)
    from safetensors import safe_open

    with safe_open(path, framework="pt") as fh:
        return dict(fh.metadata() or {})


def _unnest(sd: Mapping, path: str) -> dict[str, torch.Tensor]:
    for _ in range(3):
        if not isinstance(sd, Mapping):
            break
        if any(isinstance(v, torch.Tensor) for v in sd.values()):
            break
        inner = next((sd[k] for k in _NESTING_KEYS if k in sd and isinstance(sd[k], Mapping)), None)
        if inner is None:
            break
        sd = inner
    if not isinstance(sd, Mapping):
        raise ModelLoadError(path, f"the file holds a {type(sd).__name__}, not a dict of tensors.",
                             "a state dict of tensors")
    out = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not out:
        raise ModelLoadError(path, "the file contains no tensors.", "a state dict of tensors")
    return out


def read_state_dict(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a weight file into a flat ``{key: tensor}`` dict.

    - ``.safetensors``: header and length checked first (truncation gives a clear error).
    - ``.ckpt/.pt/.pth/.bin``: ``torch.load(weights_only=True)`` only; a pickle that needs
      arbitrary code is refused with a message saying to convert it to safetensors.
    - a nested ``state_dict`` / ``model`` / ``module`` entry is unwrapped.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelLoadError(path, "no such file.", "an existing weight file")
    lower = path.lower()
    if lower.endswith(SAFETENSORS_EXT):
        _check_safetensors_header(path)
        from safetensors.torch import load_file

        try:
            sd = load_file(path, device=str(device))
        except Exception as exc:  # safetensors raises its own error types
            raise ModelLoadError(path, f"safetensors could not read the file ({exc}).",
                                 "a complete .safetensors file") from exc
        return _unnest(sd, path)
    if lower.endswith(PICKLE_EXT):
        try:
            obj = torch.load(path, map_location=device, weights_only=True)
        except Exception as exc:
            text = str(exc)
            if "weights_only" in text or "Unsupported global" in text or "WeightsUnpickler" in text:
                raise ModelLoadError(path, "this pickle is not weights-only: loading it would run code "
                                     "stored in the file, which this pack refuses to do.",
                                     "a .safetensors file, or a .ckpt holding only tensors "
                                     "(convert it to safetensors with a trusted tool)") from exc
            raise ModelLoadError(path, f"the file is corrupt or truncated ({type(exc).__name__}: "
                                 f"{text.splitlines()[0] if text else ''}).",
                                 "a complete checkpoint file; download it again") from exc
        return _unnest(obj, path)
    raise ModelLoadError(path, "unknown file extension.",
                         f"one of {', '.join(SAFETENSORS_EXT + PICKLE_EXT)}")


def strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keys starting with ``prefix``, with the prefix removed."""
    n = len(prefix)
    return {k[n:]: v for k, v in sd.items() if k.startswith(prefix)}


def save_safetensors_atomic(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                            metadata: Mapping[str, str] | None = None) -> str:
    """Write a safetensors file through a temp file + rename, so no half-written file is left."""
    from safetensors.torch import save_file

    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp,
                  metadata=dict(metadata) if metadata else None)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # safetensors creates 0600 files regardless of the umask
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def key_mismatch_report(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor]) -> str | None:
    """Describe how ``got`` differs from the state dict ``expected`` of the module it should load
    into (missing keys, unexpected keys, wrong shapes), or None if it fits exactly."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    bad_shape = [f"{k} {tuple(got[k].shape)} vs {tuple(expected[k].shape)}" for k in expected
                 if k in got and tuple(got[k].shape) != tuple(expected[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:4])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:4])})")
    if bad_shape:
        parts.append(f"{len(bad_shape)} with the wrong shape (e.g. {'; '.join(bad_shape[:3])})")
    return "; ".join(parts) if parts else None
