// The Python module of mmdeit's CPU kernels (cpu_kernels.py builds and loads it): the one source
// that includes pybind11 with PyTorch's tensor casters (torch/csrc/utils/pybind.h, what
// <torch/extension.h> brings for them, in ~19 s of compile instead of ~35); the kernels are
// declared in cpu_kernels.h and defined in the other sources.
#include <torch/csrc/utils/pybind.h>

#include "cpu_kernels.h"

using namespace mmdeit_kernels;

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("softmax_bf16_", &softmax_bf16_, "softmax over the rows of a 2-D bf16 tensor, in place");
  m.def("layer_norm_bf16", &layer_norm_bf16, "LayerNorm of fp32 rows, written in bf16",
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("eps"),
        py::arg("stats") = py::none(), py::arg("kept") = py::none());
  m.def("layer_norm_backward_bf16", &layer_norm_backward_bf16,
        "LayerNorm's gradients from a bf16 output gradient, in fp32", py::arg("grad"),
        py::arg("x"), py::arg("stats"), py::arg("weight"), py::arg("kept") = py::none());
  m.def("add_bf16_out", &add_bf16_out, "out = x (fp32) + y (bf16)");
  m.def("drop_add_bf16", &drop_add_bf16, "fp32 identity + alpha * the kept samples' bf16 branch");
  m.def("scaled_rows_bf16", &scaled_rows_bf16, "bf16(alpha * grad) of the kept samples");
  m.def("split_heads_bf16", &split_heads_bf16, "(B, N, parts*h*d) -> (parts, B, h, N, d)");
  m.def("attention_bf16", &attention_bf16, "softmax(q k^T * scale) v on AMX, heads merged",
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("scale"), py::arg("probs") = py::none());
  m.def("attention_backward_bf16", &attention_backward_bf16,
        "the tile-unit attention's dq, dk, dv from P, written where their strides say");
  m.def("attention_avx512_bf16", &attention_avx512_bf16,
        "softmax(q k^T * scale) v in bf16 with AVX-512 BF16, heads merged");
  m.def("attention_fp32", &attention_fp32, "softmax(q k^T * scale) v in fp32, heads merged");
  m.def("amx_attention_ready", &amx_attention_ready, "whether this process may use the tile unit");
  m.def("amx_pack_weight", &amx_pack_weight, "a linear weight in amx_linear_bf16's layout");
  m.def("amx_linear_bf16", &amx_linear_bf16, "x W^T + b on AMX; GELU or a shortcut added");
  m.def("amx_weight_grad_bf16", &amx_weight_grad_bf16,
        "dy^T x and dy's column sums in fp32 on AMX");
  m.attr("MAX_ROW") = kMaxRow;
}
