"""The peers a CPU user deploys with instead of eager PyTorch, for ``benchmark.py``'s inference.

``--compile MODE ...``: ``torch.compile`` (inductor) of mmdeit's and timm's ``predict``, in
``'default'`` mode and in ``'max-autotune'`` with inductor's ``freezing`` (weights folded in as
constants, which lets inductor pre-pack them): the settings issue 26 names; on a GPU also in
``'reduce-overhead'`` (the forward replayed as one CUDA graph: what a GPU user picks at small
batches, where launching kernels costs more than running them). Each is compiled by an untimed
first call here, so the timed rounds only run it.

``--onnxruntime``: ONNX Runtime (CPU provider, every graph optimisation, ``--threads`` intra-op
threads) on mmdeit's model exported with the exporter of ``mmdeit.deployment`` (TorchScript,
opset 17; the plain path, ``fast_path=False``, holding the same weights). ONNX Runtime runs it
in fp32 whatever ``--dtype`` says: its CPU provider has no bf16 kernels for these ops, so in a
bf16 section it is the fp32 model a user would deploy.

The FLOPs of a peer are those of its eager model (a compiled or exported function computes the
same products; FlopCounterMode sees none of ONNX Runtime's): for ONNX Runtime, the plain path's
model that was exported.
"""

import argparse
from typing import Dict, List, Tuple, Union

import torch
import torch.nn as nn

try:  # imported as tools.analysis.deploy_peers
    from . import deit_models as dm
except ImportError:  # run as a script: this folder is on sys.path
    import deit_models as dm

Fn = dm.Fn

#: ``--compile``: torch.compile's mode and the inductor settings of each choice.
COMPILE_MODES = {
    'default': (None, {}),
    'max-autotune': ('max-autotune', {'freezing': True}),
    'reduce-overhead': ('reduce-overhead', {}),  # CUDA graphs: --device cuda only
}
#: Modes that need a CUDA device.
CUDA_ONLY_MODES = ('reduce-overhead',)
ONNXRUNTIME = 'onnxruntime (fp32)'


def compile_name(lib: str, mode: str) -> str:
    """The report's name of ``lib`` compiled in ``mode``."""
    return f'{lib} compile ({mode})'


def compiled_peers(
    args, models: Dict[str, nn.Module], modes: List[str]
) -> Tuple[Dict[str, Fn], Dict[str, float]]:
    """mmdeit's and timm's ``predict`` compiled in each of ``modes``, each compiled here.

    Args:
        args: The benchmark's arguments (``infer_batch``, ``dtype``, ``device``, ``seed``).
        models: The benchmark's models by name; ``'mmdeit'`` and ``'timm'`` are compiled.
        modes: Keys of :data:`COMPILE_MODES`.

    Returns:
        ``{name: function}``, a call being one batch's ``predict`` without autograd, and
        ``{name: the largest absolute difference from the eager model's output}`` on that batch
        (the same dtype and autocast).
    """
    from torch._inductor import config as inductor_config

    x = dm.batch_data(args, args.infer_batch)[0]
    fns, diffs = {}, {}
    for mode in modes:
        torch_mode, settings = COMPILE_MODES[mode]
        for lib in ('mmdeit', 'timm'):
            model = models[lib].eval()
            compiled = torch.compile(model.predict, mode=torch_mode)

            def infer(fn=compiled) -> torch.Tensor:
                with torch.no_grad(), dm.autocast(args):
                    return fn(x)

            with inductor_config.patch(settings):
                out = infer()  # compiles, with the mode's inductor settings
            with torch.no_grad(), dm.autocast(args):
                expected = model.predict(x)
            name = compile_name(lib, mode)
            fns[name], diffs[name] = infer, (out - expected).abs().max().item()
    return fns, diffs


class _Predict(nn.Module):
    """A model's ``predict`` as ``forward``, for the exporter."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.predict(x)


def export_bytes(model: nn.Module, img_size: int) -> bytes:
    """``model.predict`` as an ONNX model (fp32, dynamic batch) by mmdeit's exporter."""
    from mmdeit.deployment.onnx_export import DEFAULT_OPSET, _torchscript_export

    dummy = torch.randn(1, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return _torchscript_export(_Predict(model.eval()), dummy, DEFAULT_OPSET)


def ort_session(model: Union[str, bytes], threads: int):
    """An ONNX Runtime session of ``model`` (a path or the bytes): the CPU provider, every graph
    optimisation, ``threads`` intra-op threads and one inter-op thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model, options, providers=['CPUExecutionProvider'])


def onnxruntime_peer(args, state: dict) -> Tuple[Fn, float, Fn]:
    """ONNX Runtime on mmdeit's export with the weights ``state``.

    Returns:
        The function (one batch of ``args.infer_batch`` images), the largest absolute
        difference of its logits from PyTorch's (the plain path, fp32) on that batch, and the
        exported model's eager ``predict`` of that batch (whose FLOPs are counted for it).
    """
    plain = dm.build_deit('mmdeit', args, fast_path=False)
    plain.load_state_dict(state, strict=True)
    session = ort_session(export_bytes(plain, args.img_size), args.threads)
    fp32 = argparse.Namespace(**{**vars(args), 'dtype': 'fp32'})  # its input in every section
    x = dm.batch_data(fp32, args.infer_batch)[0]
    inputs = {session.get_inputs()[0].name: x.numpy()}
    with torch.no_grad():
        expected = plain.eval().predict(x)
    diff = (torch.from_numpy(session.run(None, inputs)[0]) - expected).abs().max().item()

    def infer() -> None:
        session.run(None, inputs)

    def eager() -> None:
        with torch.no_grad():
            plain.predict(x)

    return infer, diff, eager
