// Python bindings of the CPU kernels (loaded by cycleseg/ops/cpu.py, which allocates their outputs).
#include <torch/extension.h>

namespace cycleseg {
void softmax_cross_entropy_fwd(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&, int64_t,
                               const std::string&, at::Tensor, at::Tensor);
void softmax_cross_entropy_bwd(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                               const c10::optional<at::Tensor>&, const at::Tensor&, int64_t, const std::string&,
                               at::Tensor);
void instance_norm_relu_fwd(const at::Tensor&, double, double, at::Tensor, at::Tensor, at::Tensor);
void instance_norm_relu_bwd(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double,
                            at::Tensor);
double lsgan_loss_fwd(const at::Tensor&, double);
void lsgan_loss_bwd(const at::Tensor&, const at::Tensor&, double, double, at::Tensor);
}  // namespace cycleseg

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("softmax_cross_entropy_fwd", &cycleseg::softmax_cross_entropy_fwd);
  m.def("softmax_cross_entropy_bwd", &cycleseg::softmax_cross_entropy_bwd);
  m.def("instance_norm_relu_fwd", &cycleseg::instance_norm_relu_fwd);
  m.def("instance_norm_relu_bwd", &cycleseg::instance_norm_relu_bwd);
  m.def("lsgan_loss_fwd", &cycleseg::lsgan_loss_fwd);
  m.def("lsgan_loss_bwd", &cycleseg::lsgan_loss_bwd);
}
