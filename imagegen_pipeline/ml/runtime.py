"""The one place that decides device, autocast dtype and seeds, so every stage runs the same way.

CPU: fp32, no autocast, unless a stage asks for `cpu_bf16` and the CPU computes bf16 natively (AVX512-BF16 or
AMX): then bf16 autocast; NCHW, unless a stage asks for `cpu_channels_last`. CUDA: bf16 autocast (no loss scaling
needed), TF32 matmuls, channels-last.
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Runtime:
    """Where tensors live and how matmuls run. Build it with `resolve_runtime`, never by hand."""

    device: torch.device
    amp_dtype: torch.dtype | None  # bf16 on CUDA (and on a bf16 CPU when asked), else None (plain fp32)
    channels_last: bool  # NHWC memory format: faster convolutions on tensor cores (and depthwise ones on CPU)

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision where it pays (CUDA bf16); a no-op elsewhere."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def to_device(self, module: torch.nn.Module) -> torch.nn.Module:
        module = module.to(self.device)
        return module.to(memory_format=torch.channels_last) if self.channels_last else module

    def describe(self) -> dict:
        name = torch.cuda.get_device_name(self.device) if self.is_cuda else "cpu"
        return {"device": str(self.device), "device_name": name,
                "amp_dtype": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "float32",
                "channels_last": self.channels_last, "torch": torch.__version__,
                "threads": torch.get_num_threads()}


def cpu_has_native_bf16() -> bool:
    """True on CPUs whose oneDNN kernels compute bf16 in hardware (AVX512-BF16 or AMX); elsewhere bf16 on CPU
    is emulated and slower than fp32."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - a torch build without the probe
        return False


def resolve_runtime(device: str = "auto", *, local_rank: int | None = None, amp: bool = True,
                    cpu_bf16: bool = False, cpu_channels_last: bool = False) -> Runtime:
    """'auto' takes CUDA when present; asking for 'cuda' without one is a clear error, not a silent CPU run.

    cpu_bf16: on a CPU with native bf16, autocast to bf16 as on CUDA. DCGAN training asks for it (1.3-1.8x the
    fp32 steps per second on this project's 2-core box); stages whose numbers are compared across runs (features,
    FID, the extractor) do not.

    cpu_channels_last: NHWC on CPU too. The MobileNetV2 extractor asks for it: its depthwise convolutions ran 2.0x
    faster in inference and 1.5x in training on the 2-core box (oneDNN's NHWC kernels), features within 3e-6
    relative. The DCGAN's dense convolutions gained nothing (1,690 vs 1,680 img/s), so it keeps NCHW on CPU."""
    if device not in DEVICE_CHOICES:
        raise ValueError(f"device must be one of {DEVICE_CHOICES}, got {device!r}")
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but torch sees no CUDA GPU; use device='auto' or 'cpu'")
    if not use_cuda:
        bf16 = amp and cpu_bf16 and cpu_has_native_bf16()
        return Runtime(torch.device("cpu"), torch.bfloat16 if bf16 else None, cpu_channels_last)
    index = local_rank if local_rank is not None else int(os.environ.get("LOCAL_RANK", 0))
    torch.cuda.set_device(index)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    bf16 = amp and torch.cuda.is_bf16_supported()
    return Runtime(torch.device("cuda", index), torch.bfloat16 if bf16 else None, True)


def seed_everything(seed: int, *, rank: int = 0) -> torch.Generator:
    """Seed python, numpy and torch (each DDP rank differently, as stylegan2-ada does); return a CPU generator."""
    s = int(seed) * max(1, int(os.environ.get("WORLD_SIZE", 1))) + rank
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    return torch.Generator().manual_seed(s)
