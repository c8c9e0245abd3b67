// Python bindings of the CPU kernels (loaded by cycleseg/ops/cpu.py, registered as custom ops there).
#include <torch/extension.h>

namespace cycleseg {
std::vector<at::Tensor> softmax_cross_entropy_fwd(const at::Tensor&, const at::Tensor&,
                                                  const c10::optional<at::Tensor>&, int64_t, const std::string&);
at::Tensor softmax_cross_entropy_bwd(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                     const c10::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&,
                                     int64_t, const std::string&);
std::vector<at::Tensor> instance_norm_relu_fwd(const at::Tensor&, double);
at::Tensor instance_norm_relu_bwd(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&);
at::Tensor lsgan_loss_fwd(const at::Tensor&, double);
at::Tensor lsgan_loss_bwd(const at::Tensor&, const at::Tensor&, double);
}  // namespace cycleseg

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("softmax_cross_entropy_fwd", &cycleseg::softmax_cross_entropy_fwd);
  m.def("softmax_cross_entropy_bwd", &cycleseg::softmax_cross_entropy_bwd);
  m.def("instance_norm_relu_fwd", &cycleseg::instance_norm_relu_fwd);
  m.def("instance_norm_relu_bwd", &cycleseg::instance_norm_relu_bwd);
  m.def("lsgan_loss_fwd", &cycleseg::lsgan_loss_fwd);
  m.def("lsgan_loss_bwd", &cycleseg::lsgan_loss_bwd);
}
