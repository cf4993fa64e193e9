"""The encoder layer of ``transformer_layer.py`` with the same function and less work.

Every speed measure of the backbone lives here; the backbone builds these classes when its
``fast_path`` switch is on (the default) and the reference ones when it is off. The state_dict
keys are the reference's. The measures (see ``docs/benchmarks.md``):

* **Shortcuts summed inside the GEMMs.** ``identity + bias`` is written once and ``addmm_``
  accumulates ``x @ W^T`` into it (output projection, second FFN layer), instead of a GEMM,
  a new tensor for the branch and a separate add. Without autograd the FFN's shortcut is a
  temporary of the layer, so its memory is reused and the GELU works in place.
* **oneDNN linears for CPU inference**, the FFN's GELU fused into the first GEMM
  (``mmdeit/models/utils/onednn_linear.py``); the shortcut is added into the GEMM's output.
  In fp32, and in bf16 on CPUs with native bf16 GEMMs: a model cast to bf16, or bf16
  autocast (bf16 copies of the weights made once, not per call; the branch is summed into
  the fp32 shortcut, as autocast's ``x + branch`` does).
* **Stochastic depth skips the dropped samples** in training on the CPU (mmcv's draw; on CUDA
  and in ``torch.compile`` the mask multiplies: ``mmdeit/models/utils/drop_path.py``).
* **Attention as two GEMMs in bf16 on the CPU** (``mmdeit/models/utils/gemm_attention.py``):
  faster there than PyTorch's flash kernel; in inference ``1/sqrt(d)`` scales q in its GEMM.
* **mmdeit's C++ kernels** on AVX-512 BF16 CPUs: in bf16 autocast the softmax, the pre-norms
  written in bf16, the bf16 branch added, the heads split in one pass (``cpu_kernels.py``); the
  attention reading the heads as views, on AMX's tile unit (``amx_attention.py``), elsewhere in
  ``vdpbf16ps`` register blocks (``bf16_attention.py``). In fp32 inference the attention in
  registers and L1/L2 (``fp32_attention.py``). In training the pre-norms' own backward
  (``layer_norm_grad.py``), on AMX the linears' weight and bias gradients on the tile unit
  (``amx_linear_grad.py``).
* **q of the first tokens only**: given ``num_queries`` (the backbone's last layer gives only
  the cls/dist tokens it reads) the reference slices q from the whole qkv GEMM; here q's rows
  come from a GEMM on the first rows, except with autograd off the CPU (:func:`_q_rows_from_whole`).
* **Kept weight copies for autocast inference on a GPU** (:meth:`FastTransformerEncoderLayer.
  _forward_kept_casts`): a small-batch GPU forward is bound by launches, and autocast casts
  every weight in every call (8 of a layer's ~23 kernels on an H200); the layer keeps them.
* **None under inductor's ``freezing`` on an AMX CPU**: the reference's formula, which inductor
  packs, fuses and tunes faster there (``plain_ops_traced`` in ``mmdeit/models/utils/cpu_ops.py``).

Under autocast on a GPU with autograd only ``num_queries`` applies; layers without it run the
reference's ``_forward`` (fewer Python calls for the same kernels). Each measure applies only
where it is exact (fp32, erf GELU: only the sums' rounding order changes; in bf16, the products
autocast or the bf16 model computes); elsewhere the reference runs (``super()``). Under
autocast the shortcut stays fp32; with autograd, autocast's ops run.
"""

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn.bricks.drop import DropPath

from ..utils import amx_linear_grad, bf16_attention, cpu_kernels, fp32_attention, layer_norm_grad
from ..utils import onednn_linear as onednn
from ..utils.cpu_ops import plain_ops_traced
from ..utils.drop_path import multiply_dropped, skip_dropped_samples, skips_dropped_samples
from ..utils.gemm_attention import gemm_attention, gemm_attention_applies, q_scale_folds
from .transformer_layer import FFN, MultiheadAttention, TransformerEncoderLayer


def _autocast_on(x: torch.Tensor) -> bool:
    """Whether autocast is on for ``x``'s device type; False for a type autocast does not know
    (such as 'meta', where asking would raise). Not asked while compiling: torch 2.11's dynamo
    broke the graph on ``torch.amp.is_autocast_available`` (an H200: host time 12x timm's)."""
    device = x.device.type
    if not torch.compiler.is_compiling() and not torch.amp.is_autocast_available(device):
        return False
    return torch.is_autocast_enabled(device)


def _active_dropout(module: nn.Module) -> bool:
    """Whether a dropout-like module (Dropout, DropPath or ``nn.Identity``) changes its input
    now; no attribute lookup that can fail (a failed one costs microseconds: raised, caught)."""
    if not module.training or type(module) is nn.Identity:
        return False
    if isinstance(module, nn.Dropout):
        return module.p > 0
    return module.drop_prob > 0 if isinstance(module, DropPath) else True


def _fused_residual_linear(
    identity: torch.Tensor,
    x: torch.Tensor,
    linear: nn.Linear,
    dropout: nn.Module,
    layer_scale: nn.Module,
    drop_path: nn.Module,
    inplace: bool = False,
) -> torch.Tensor:
    """``identity + drop_path(layer_scale(dropout(linear(x))))`` with fewer memory passes.

    The common case (no active dropout or DropPath, no LayerScale, no autocast) writes
    ``identity + bias`` once and lets the GEMM accumulate ``x @ W^T`` into it (``addmm_``,
    beta=1). With oneDNN (CPU inference in fp32, of a bf16 model, or under bf16 autocast) the
    GEMM writes a new tensor and the shortcut is added into it in place; under autocast the
    bf16 branch is added into the fp32 shortcut instead (in place if ``inplace``), so the sum
    has the shortcut's dtype as in the reference. Otherwise the formula is computed as written.

    Args:
        identity: The shortcut (B, n, C_out).
        x: The branch input (B, n, C_in).
        linear: The branch's linear layer.
        dropout: Dropout after the linear layer.
        layer_scale: LayerScale or ``nn.Identity``.
        drop_path: DropPath or ``nn.Identity``.
        inplace: Write the result into ``identity``'s memory; only for a temporary that
            nothing else holds, with autograd off. Defaults to False.
    """
    if (
        _active_dropout(dropout)
        or _active_dropout(drop_path)
        or not isinstance(layer_scale, nn.Identity)
    ):
        return identity + drop_path(layer_scale(dropout(amx_linear_grad.linear(x, linear))))
    if onednn.onednn_applies(x, linear):  # CPU inference: fp32, a bf16 model, bf16 autocast
        return onednn.linear_add(identity, x, linear, inplace)  # summed in the stream's dtype
    if _autocast_on(x):  # keep the shortcut in full precision
        return identity + amx_linear_grad.linear(x, linear)  # dropout etc. are identities
    shape = identity.shape  # (B, n, C_out)
    x2d = x.reshape(-1, x.shape[-1])  # (B*n, C_in), a view for contiguous x
    identity2d = identity.reshape(-1, shape[-1])  # (B*n, C_out)
    bias = linear.bias
    if inplace and identity.is_contiguous():
        out = identity2d if bias is None else identity2d.add_(bias)
    else:
        # One pass writes ``identity + bias`` (the copy ``addmm`` would do for the bias).
        out = identity2d.clone() if bias is None else identity2d + bias
    return out.addmm_(x2d, linear.weight.t()).view(shape)  # GEMM with beta=1: adds in place


def _q_rows_from_whole(x: torch.Tensor) -> bool:
    """Whether the last layer's q rows come from the whole qkv GEMM (sliced from its output)
    rather than from GEMMs on slices of the weight: with autograd on a device other than the
    CPU. There the weight slices cost a cast each under autocast and zero-filled gradient
    copies in the backward, 19 more kernels in a training step (counted), on a GPU step whose
    host launching is as long as its device work; the q rows of all tokens cost ~0.7 % of the
    model's FLOPs. On the CPU (compute-bound) and without autograd the slices stay."""
    return x.device.type != 'cpu' and torch.is_grad_enabled()


class FastMultiheadAttention(MultiheadAttention):
    """:class:`MultiheadAttention` that can compute the first output tokens only and sum the
    shortcut inside its output projection. Arguments as the parent's."""

    def _qkv(
        self,
        x: torch.Tensor,
        num_queries: Optional[int] = None,
        scale_rows: Optional[Tuple[int, float]] = None,
    ) -> Tuple[torch.Tensor, ...]:
        """q (B, h, n, d) of the first ``num_queries`` tokens (None: all N), k and v
        (B, h, N, d) of all; oneDNN GEMMs where they apply (``scale_rows``, for q scaled by
        the GEMM: only there)."""
        if num_queries is None:
            if not onednn.onednn_applies(x, self.qkv):  # the parent's, the tile unit's dW
                return self._split_heads(amx_linear_grad.linear(x, self.qkv), 3)
            return self._split_heads(onednn.onednn_linear(x, self.qkv, scale_rows=scale_rows), 3)
        if _q_rows_from_whole(x):
            q, k, v = super()._qkv(x)  # 3 x (B, h, N, d), one GEMM
            return q[:, :, :num_queries], k, v  # q (B, h, n, d), a view
        B, C, h, d = x.shape[0], self.embed_dims, self.num_heads, self.head_dims
        q = onednn.linear_rows(x[:, :num_queries], self.qkv, slice(C), scale_rows)  # (B, n, C)
        q = q.reshape(B, num_queries, h, d).transpose(1, 2)  # (B, h, n, d), a view
        kv = onednn.linear_rows(x, self.qkv, slice(C, 3 * C), scale_rows)  # the same copy
        k, v = self._split_heads(kv, 2)
        return q, k, v  # (B, h, n, d), 2 x (B, h, N, d)

    def _split_heads(self, t: torch.Tensor, parts: int) -> Tuple[torch.Tensor, ...]:
        """The parent's views; in bf16 CPU inference contiguous copies made in one pass
        (``cpu_kernels.split_heads``), the layout the GEMM attention would copy them to; not
        where an attention kernel reads the views (``bf16_attention.takes_views``)."""
        if cpu_kernels.split_applies(t) and not bf16_attention.takes_views(self.head_dims):
            return cpu_kernels.split_heads(t, parts, self.num_heads)
        return super()._split_heads(t, parts)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The parent's attention; two bf16 GEMMs or the fp32 kernel where faster than SDPA."""
        drop = self.attn_drop if self.training else 0.0
        if gemm_attention_applies(q, drop):
            return gemm_attention(q, k, v, self.scale)  # (B, n, C)
        if fp32_attention.attention_applies(q, k, v, drop):
            return fp32_attention.attention(q, k, v, self.scale)  # (B, n, C)
        return super()._attend(q, k, v)

    def _attention(self, x: torch.Tensor, num_queries: Optional[int] = None) -> torch.Tensor:
        """q k v and the attention, heads merged: (B, N, C) -> (B, n, C); the scale in q's
        projection where :func:`q_scale_folds` holds."""
        if not q_scale_folds(x, self.qkv, self.scale, self.attn_drop if self.training else 0.0):
            return self._attend(*self._qkv(x, num_queries))
        return gemm_attention(*self._qkv(x, num_queries, (self.embed_dims, self.scale)), 1.0)

    def branch(self, x: torch.Tensor, num_queries: Optional[int] = None) -> torch.Tensor:
        """The residual branch without stochastic depth: (B, N, C) -> (B, n, C)."""
        out = self._attention(x, num_queries)  # (B, n, C)
        return self.gamma1(self.proj_drop(amx_linear_grad.linear(out, self.proj)))

    def add_branch(
        self,
        identity: torch.Tensor,
        x: torch.Tensor,
        num_queries: Optional[int] = None,
        inplace: bool = False,
    ) -> torch.Tensor:
        """``identity + self(x)[:, :num_queries]`` (B, n, C), the sum inside the projection.

        Args:
            identity: The shortcut (B, n, C).
            x: The (normalized) tokens (B, N, C).
            num_queries: Compute only the first ``num_queries`` output tokens; None for all.
                Defaults to None.
            inplace: See :func:`_fused_residual_linear`. Defaults to False.
        """
        out = self._attention(x, num_queries)  # (B, n, C)
        return _fused_residual_linear(
            identity, out, self.proj, self.proj_drop, self.gamma1, self.out_drop, inplace
        )


class FastFFN(FFN):
    """:class:`FFN` whose GELU is fused into a oneDNN GEMM or works in place without
    autograd, and that sums the shortcut inside its second GEMM. Arguments as the parent's."""

    def _hidden(self, x: torch.Tensor) -> torch.Tensor:
        """``drop(GELU(fc1(x)))``: (B, N, C) -> (B, N, feedforward_channels)."""
        fc1, act, drop = self.layers[0]
        if type(act) is not nn.GELU:
            return self.layers[0](x)
        if onednn.onednn_applies(x, fc1):  # CPU inference: fp32 or bf16
            return drop(onednn.onednn_linear(x, fc1, gelu=act.approximate))
        if torch.is_grad_enabled():  # the parent's, the tile unit's dW
            return drop(act(amx_linear_grad.linear(x, fc1)))
        hidden = torch.ops.aten.gelu_(fc1(x), approximate=act.approximate)  # in place
        return drop(hidden) if _active_dropout(drop) else hidden

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch without stochastic depth: (B, N, C) -> (B, N, C)."""
        hidden = self._hidden(x)  # (B, N, feedforward_channels)
        return self.gamma2(self.layers[2](amx_linear_grad.linear(hidden, self.layers[1])))

    def add_branch(
        self, identity: torch.Tensor, x: torch.Tensor, inplace: bool = False
    ) -> torch.Tensor:
        """``identity + self(x)`` (B, N, C), the sum inside the second GEMM.

        Args:
            identity: The shortcut (B, N, C).
            x: The (normalized) tokens (B, N, C).
            inplace: ``identity`` is a temporary of the caller: without autograd the result
                is written into its memory. Defaults to False.
        """
        inplace = inplace and not torch.is_grad_enabled()
        fc2, drop = self.layers[1], self.layers[2]
        return _fused_residual_linear(
            identity, self._hidden(x), fc2, drop, self.gamma2, self.dropout_layer, inplace
        )


def _measures_apply(x: torch.Tensor) -> bool:
    """Whether a measure other than ``num_queries`` can change this layer's work: on the CPU,
    or without autocast. Under autocast on a GPU none does: the reference runs, the same
    kernels through fewer Python calls (what bounds a small GPU forward; an H200)."""
    return x.device.type == 'cpu' or not _autocast_on(x)


def _keeps_casts(x: torch.Tensor, layer: nn.Module) -> bool:
    """Whether ``layer`` runs :meth:`FastTransformerEncoderLayer._forward_kept_casts`: eval
    mode, no autograd, autocast, off the CPU, not while ``torch.compile`` traces (the kept
    copies are Python state, not ops of a graph: the reference runs there)."""
    return (
        x.device.type != 'cpu'
        and not layer.training
        and not torch.is_grad_enabled()
        and _autocast_on(x)
        and not torch.compiler.is_compiling()
    )


def _add_residual(
    identity: torch.Tensor,
    x: torch.Tensor,
    norm: nn.Module,
    module: nn.Module,
    drop_path: nn.Module,
    inplace: bool = False,
    **kwargs,
) -> torch.Tensor:
    """``identity + module(norm(x))``; in training, dropped samples' branches are skipped.

    On the CPU only (``nonzero`` would wait for a CUDA device in every layer): elsewhere, and
    while ``torch.compile`` traces, the dropped samples are computed and multiplied by 0 (the
    same random draw; ``mmdeit/models/utils/drop_path.py``).

    Args:
        identity: The shortcut (B, n, C).
        x: The layer tokens (B, N, C).
        norm: The pre-norm.
        module: A :class:`FastMultiheadAttention` or :class:`FastFFN`.
        drop_path: The module's stochastic depth (DropPath or ``nn.Identity``).
        inplace: Passed to ``module.add_branch``. Defaults to False.
        **kwargs: Passed to ``module.branch`` and ``module.add_branch``.
    """
    if isinstance(drop_path, DropPath) and _active_dropout(drop_path):

        def branch(t: torch.Tensor, kept: Optional[torch.Tensor] = None) -> torch.Tensor:
            return module.branch(layer_norm_grad.pre_norm(norm, t, kept), **kwargs)

        if not skips_dropped_samples(x):  # CUDA (no host sync per layer), torch.compile
            return multiply_dropped(identity, x, branch, drop_path.drop_prob)
        return skip_dropped_samples(identity, x, branch, drop_path.drop_prob, branch)
    x = layer_norm_grad.pre_norm(norm, x)  # in bf16 where the kernels apply
    return module.add_branch(identity, x, inplace=inplace, **kwargs)


class FastTransformerEncoderLayer(TransformerEncoderLayer):
    """:class:`TransformerEncoderLayer` with the speed measures of this module.

    Same arguments, state_dict and function as the parent; :meth:`forward` and
    :meth:`forward_with_attention` are the parent's.
    """

    attn_cls = FastMultiheadAttention
    ffn_cls = FastFFN

    def _kept_weights(self, dtype: torch.dtype) -> Tuple[Optional[torch.Tensor], ...]:
        """The weights and biases of qkv, proj, fc1 and fc2 in ``dtype``, kept by the layer.

        Made again when one of them changes: in place (an optimizer step, ``load_state_dict``
        bump its version), new storage (``.to()``), a mode switch (:meth:`train`, for a change
        through ``.data``). Not in the ``state_dict``; they cost half the fp32 weights' memory.
        Not kept for weights made under ``torch.inference_mode`` (no version to tell a change).
        """
        # The modules' own dicts: ``self.attn.qkv.weight`` and the like took ~15 µs a layer
        # through ``nn.Module.__getattr__`` (now ~3.5 µs; ~3 % of a small forward's host time).
        attn, mlp = self._modules['attn']._modules, self._modules['ffn']._modules['layers']
        linears = (attn['qkv'], attn['proj'], mlp._modules['0'][0], mlp._modules['1'])  # fc1, fc2
        params = [p for m in linears for p in m._parameters.values()]  # weight, bias (or None)
        if any(p is not None and p.is_inference() for p in params):  # no version: not kept
            return tuple(None if p is None else p.to(dtype) for p in params)
        key = [dtype] + [None if p is None else (p.data_ptr(), p._version) for p in params]
        kept = self.__dict__.get('_kept')
        if kept is None or kept[0] != key:
            with torch.no_grad():
                kept = (key, tuple(None if p is None else p.to(dtype) for p in params))
            self.__dict__['_kept'] = kept  # a plain attribute: not a parameter or buffer
        return kept[1]

    def _forward_kept_casts(
        self, x: torch.Tensor, num_queries: Optional[int] = None
    ) -> torch.Tensor:
        """The layer under autocast without autograd (eval mode), with the kept weight copies.

        What autocast computes, with fewer kernels and Python calls: LayerNorm in fp32, its
        output cast once; the linears on the autocast dtype's weights (:meth:`_kept_weights`;
        autocast would cast each weight and bias in every call); the shortcut in fp32; the GELU
        in place. (B, N, C) -> (B, n, C), n = ``num_queries`` or N.
        """
        attn, ffn = self.attn, self.ffn
        dtype = torch.get_autocast_dtype(x.device.type)
        w_qkv, b_qkv, w_proj, b_proj, w_fc1, b_fc1, w_fc2, b_fc2 = self._kept_weights(dtype)
        B, C, h, d = x.shape[0], attn.embed_dims, attn.num_heads, attn.head_dims
        t = self.ln1(x).to(dtype)  # (B, N, C)
        if num_queries is None:
            identity = x
            q, k, v = attn._split_heads(F.linear(t, w_qkv, b_qkv), 3)  # 3 x (B, h, N, d)
        else:  # q of the first tokens only; k and v of all
            identity = x[:, :num_queries]  # (B, n, C)
            b_q, b_kv = (None, None) if b_qkv is None else (b_qkv[:C], b_qkv[C:])
            q = F.linear(t[:, :num_queries], w_qkv[:C], b_q)  # (B, n, C)
            q = q.reshape(B, num_queries, h, d).transpose(1, 2)  # (B, h, n, d)
            k, v = attn._split_heads(F.linear(t, w_qkv[C:], b_kv), 2)  # 2 x (B, h, N, d)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, n, d), (B, n, h, d) in memory
        out = out.transpose(1, 2).reshape(B, q.shape[2], C)  # (B, n, C), a view
        x = identity + attn.gamma1(F.linear(out, w_proj, b_proj))  # a new tensor, fp32
        hidden = F.linear(self.ln2(x).to(dtype), w_fc1, b_fc1)  # (B, n, feedforward)
        hidden = torch.ops.aten.gelu_(hidden, approximate=ffn.layers[0][1].approximate)
        return x.add_(ffn.gamma2(F.linear(hidden, w_fc2, b_fc2)))  # (B, n, C), in place

    def _forward(self, x: torch.Tensor, num_queries: Optional[int] = None) -> torch.Tensor:
        if _keeps_casts(x, self):
            return self._forward_kept_casts(x, num_queries)
        # The reference: the same ops with fewer Python calls, or inductor's own (freezing).
        if plain_ops_traced(x) or (num_queries is None and not _measures_apply(x)):
            return super()._forward(x, num_queries)
        identity = x if num_queries is None else x[:, :num_queries]  # (B, n, C)
        x = _add_residual(  # a new tensor: the input is never modified
            identity, x, self.ln1, self.attn, self.attn.out_drop, num_queries=num_queries
        )
        # x is this layer's temporary: without autograd its memory takes the sum.
        return _add_residual(x, x, self.ln2, self.ffn, self.ffn.dropout_layer, inplace=True)

    def train(self, mode: bool = True) -> 'FastTransformerEncoderLayer':
        """Set the mode, and drop the weight copies of inference (on the CPU the bf16 copies
        and the weights packed for oneDNN, fp32 ones too: ``onednn_linear.clear_weight_copies``;
        on a GPU :meth:`_kept_weights`).

        They are made again at the next such call: so a switch of mode (e.g. the validation
        loop's ``model.eval()``) also catches weights changed through ``.data`` (as mmengine's
        EMA hook swaps them), which leaves the weight's version unchanged.
        """
        onednn.clear_weight_copies(self)
        self.__dict__.pop('_kept', None)
        return super().train(mode)
