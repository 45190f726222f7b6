"""Trace accelerator code paths on a CPU-only machine: a fake device and a host-sync detector.

:func:`fake_device` enters ``torch._subclasses.fake_tensor.FakeTensorMode`` and makes torch
report the accelerator as present (``torch.cuda.is_available()``, capability, current
device; or ``torch.backends.mps.is_available()``). Tensors created on
``torch.device("cuda", 0)`` inside it are fake: they carry shape, dtype and device, run
every op's shape logic (including ``varlen_attn``'s and FlexAttention's fake kernels), and
hold no data. Weights come in through :meth:`FakeDevice.state` (real CPU tensors converted
with ``fake_mode.from_tensor``) and code under test builds its modules from that state dict
on the fake device.

:class:`SyncRecorder` (``fake.no_host_sync()``) watches every op: reading device data on the
host (``.item()``, ``.tolist()``, ``bool(t)``, ``nonzero``, boolean-mask indexing, a
``repeat_interleave`` without ``output_size``…) raises :class:`HostSyncError` at once, and
:meth:`SyncRecorder.check_final_copies` fails when a device-to-host copy happens before the
device work is over.

What the fake device cannot run (torch 2.13, CPU build): Python indexing of device tensors
(``x[i]``, ``x[:, :k]``, ``x[mask]``; they need a device guard the CPU build lacks), so
traced code uses ``narrow``/``select``/``index_select``; ``safetensors`` loading inside the
mode; ``torch.compile`` (the mode runs compiled functions eagerly, ``force_eager``). On the fake
``mps`` device, ``scaled_dot_product_attention`` runs torch's math path (the CPU build has no
MPS entry in the fused-kernel choice; see :class:`_SdpaMathOnMps`).

>>> import torch
>>> with fake_device("cuda") as fake:
...     x = torch.ones(4, 8, device=fake.device, dtype=torch.bfloat16)
...     with fake.no_host_sync() as rec:
...         y = (x @ x.T).float().cpu()
...     rec.check_final_copies()
...     (y.shape, y.dtype, y.device.type, torch.cuda.is_available())
(torch.Size([4, 4]), torch.float32, 'cpu', True)
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["FakeDevice", "HostSyncError", "OpEvent", "SyncRecorder", "fake_device"]

# Ops whose result depends on device data read back by the host: each is a sync.
_READBACK = frozenset(
    {
        "aten._local_scalar_dense",  # .item(), .tolist(), bool(t), int(t), float(t)
        "aten.item",
        "aten.is_nonzero",
        "aten.nonzero",  # also behind x[bool_mask] and torch.where(cond)
        "aten.masked_select",
        "aten.unique",
        "aten._unique",
        "aten._unique2",
        "aten.unique_consecutive",
        "aten.unique_dim",
        "aten.equal",
        "aten.allclose",
    }
)
_COPIES = frozenset({"aten._to_copy", "aten.copy_", "aten.to"})


class HostSyncError(AssertionError):
    """Code meant to stay on the device read device data on the host."""


@dataclass(frozen=True)
class OpEvent:
    """One op seen on the way down: its name, whether it touched the accelerator, whether
    it copied accelerator data to the host, and the dtypes of its tensor outputs."""

    name: str
    on_device: bool
    to_host: bool
    dtypes: tuple[torch.dtype, ...]


@dataclass(eq=False, repr=False)
class SyncRecorder(TorchDispatchMode):
    """Records every op; raises :class:`HostSyncError` when one reads device data on the host.

    ``events`` lists :class:`OpEvent` in order. Use it through :meth:`FakeDevice.no_host_sync`.
    """

    device_type: str
    events: list[OpEvent] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        name = str(func.overloadpacket._qualified_op_name).replace("::", ".")
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        on_device = any(t.device.type == self.device_type for t in inputs)
        if on_device and (name in _READBACK or _unsized_repeat(name, args, kwargs)):
            raise HostSyncError(
                f"{name} on a {self.device_type} tensor reads device data on the host "
                f"(a device synchronisation); after: {self.recent()}"
            )
        out = func(*args, **kwargs)
        outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        to_host = (
            on_device
            and name in _COPIES
            and any(t.device.type == "cpu" for t in outputs)
            and any(t.device.type == self.device_type for t in inputs)
        )
        self.events.append(OpEvent(name, on_device, to_host, tuple(t.dtype for t in outputs)))
        return out

    def recent(self, n: int = 8) -> list[str]:
        """Names of the last ``n`` ops (for error messages)."""
        return [e.name for e in self.events[-n:]]

    def names(self) -> list[str]:
        return [e.name for e in self.events]

    def check_final_copies(self, *, expected: int | None = None) -> None:
        """Fail unless every device-to-host copy comes after the last device computation
        (the result's copy to the CPU ends the forward; nothing waits on it midway).
        ``expected``: the number of such copies, when known."""
        copies = [i for i, e in enumerate(self.events) if e.to_host]
        if expected is not None and len(copies) != expected:
            raise HostSyncError(f"expected {expected} device-to-host copies, saw {len(copies)}")
        if not copies:
            return
        # prim ops (device queries) read metadata, not data.
        later = [
            e.name
            for e in self.events[copies[0] + 1 :]
            if e.on_device and not e.to_host and not e.name.startswith("prim.")
        ]
        if later:
            raise HostSyncError(
                "a device-to-host copy happened before the device work was over; "
                f"device ops after it: {later[:8]}"
            )


def _unsized_repeat(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """``repeat_interleave`` with tensor repeats must be told its output size, else it
    reads the sum of the repeats back from the device."""
    if name != "aten.repeat_interleave":
        return False
    tensor_repeats = len(args) >= 2 and isinstance(args[1], torch.Tensor)
    if not tensor_repeats and not (len(args) == 1 and isinstance(args[0], torch.Tensor)):
        return False
    return kwargs.get("output_size") is None and not (len(args) >= 4 and args[3] is not None)


@dataclass
class FakeDevice:
    """The fake accelerator :func:`fake_device` yields: its ``device`` and fake ``mode``."""

    mode: FakeTensorMode
    device: torch.device

    def tensor(self, real: torch.Tensor) -> torch.Tensor:
        """A fake (CPU) copy of a real tensor, usable inside the mode."""
        return self.mode.from_tensor(real)

    def state(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A state dict of real CPU tensors converted into the fake mode (load it with the
        real loaders before entering :func:`fake_device`)."""
        return {k: self.mode.from_tensor(v) for k, v in state.items()}

    @contextlib.contextmanager
    def no_host_sync(self) -> Iterator[SyncRecorder]:
        """Record every op within; raise :class:`HostSyncError` on a device read-back."""
        with SyncRecorder(self.device.type) as recorder:
            yield recorder


def _cuda_patches(capability: tuple[int, int], name: str) -> list[Any]:
    cuda = torch.cuda
    return [
        mock.patch.object(cuda, "is_available", lambda: True),
        mock.patch.object(cuda, "device_count", lambda: 1),
        mock.patch.object(cuda, "current_device", lambda: 0),
        mock.patch.object(cuda, "get_device_capability", lambda device=None: capability),
        mock.patch.object(cuda, "get_device_name", lambda device=None: name),
    ]


def _mps_patches(capability: tuple[int, int], name: str) -> list[Any]:
    mps = torch.backends.mps
    return [
        mock.patch.object(mps, "is_available", lambda: True),
        mock.patch.object(mps, "is_built", lambda: True),
    ]


class _SdpaMathOnMps(TorchDispatchMode):
    """Runs ``scaled_dot_product_attention`` on fake MPS tensors through torch's math path.

    The composite op first asks the fused-kernel choice stub (``_fused_sdp_choice``) for a
    backend; a CPU build has no MPS entry in it and aborts with ``INTERNAL ASSERT FAILED ...
    DispatchStub.cpp ... An unexpected device type was provided mps``. On an MPS build the
    stub offers no fused kernel for MPS either, so torch takes its math branch; here that
    branch's generic form (``_scaled_dot_product_attention_math``) runs instead, which gives
    the same shapes and dtypes. What this cannot show: which Metal kernel a Mac runs."""

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func is torch.ops.aten.scaled_dot_product_attention.default and any(
            isinstance(t, torch.Tensor) and t.device.type == "mps" for t in args[:3]
        ):
            return torch.ops.aten._scaled_dot_product_attention_math.default(*args, **kwargs)[0]
        return func(*args, **kwargs)


_PATCHES: dict[str, Callable[[tuple[int, int], str], list[Any]]] = {
    "cuda": _cuda_patches,
    "mps": _mps_patches,
}


def _flex_fake_kernel_patch() -> Any:
    """torch's FlexAttention fake kernel copies its (data-less) output into a strided one
    with a real ``copy_``, which needs a device guard the CPU build lacks for CUDA; the
    copy carries no information for a fake tensor, so the strided empty tensor is enough."""
    module = sys.modules.get("torch._higher_order_ops.flex_attention")
    if module is None or not hasattr(module, "_permute_strides"):
        return contextlib.nullcontext()

    def permute_strides(out: torch.Tensor, query_strides: tuple[int, ...]) -> torch.Tensor:
        from torch._inductor.ir import get_fill_order

        order = list(get_fill_order(query_strides))
        strides = module._construct_strides(out.shape, order)
        if strides[-1] != 1:  # the same rule as torch's: last dimension contiguous
            order.remove(len(out.shape) - 1)
            strides = module._construct_strides(out.shape, [len(out.shape) - 1, *order])
        return out.new_empty_strided(out.shape, strides)

    return mock.patch.object(module, "_permute_strides", permute_strides)


_HOPS_REGISTERED: set[str] = set()


def _register_hops() -> None:
    """Higher-order ops (FlexAttention) dispatch to a Python mode only through a rule
    registered for that mode's class: record them, then run them under the modes below."""
    if "flex_attention" in _HOPS_REGISTERED:
        return
    from torch._higher_order_ops.flex_attention import flex_attention as flex_hop
    from torch.utils._python_dispatch import _pop_mode_temporarily

    @flex_hop.py_impl(SyncRecorder)
    def _flex(mode: SyncRecorder, *args: Any, **kwargs: Any) -> Any:
        with _pop_mode_temporarily():
            out = flex_hop(*args, **kwargs)
        outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        on_device = any(t.device.type == mode.device_type for t in outputs)
        dtypes = tuple(t.dtype for t in outputs)
        mode.events.append(OpEvent("higher_order.flex_attention", on_device, False, dtypes))
        return out

    _HOPS_REGISTERED.add("flex_attention")


@contextlib.contextmanager
def fake_device(
    device_type: str = "cuda",
    *,
    capability: tuple[int, int] = (9, 0),
    name: str = "fake accelerator",
) -> Iterator[FakeDevice]:
    """Enter a fake ``device_type`` accelerator (``"cuda"`` or ``"mps"``) for tracing.

    ``capability`` is what ``torch.cuda.get_device_capability`` reports (default sm90, an
    H100/H200). Inside, ``torch.compile``d functions run eagerly and every tensor is fake.
    """
    if device_type not in _PATCHES:
        raise ValueError(f"no fake {device_type!r} device; use one of {sorted(_PATCHES)}")
    importlib.import_module("torch.nn.attention.flex_attention")  # the HOP module to patch

    _register_hops()
    device = torch.device(device_type, 0)
    with contextlib.ExitStack() as stack:
        for patch in _PATCHES[device_type](capability, name):
            stack.enter_context(patch)
        if device_type == "cuda" and not torch.backends.cuda.is_built():
            stack.enter_context(_flex_fake_kernel_patch())
        stack.enter_context(torch.compiler.set_stance("force_eager"))
        mode = FakeTensorMode()
        stack.enter_context(mode)
        if device_type == "mps":
            stack.enter_context(_SdpaMathOnMps())
        yield FakeDevice(mode=mode, device=device)
