// The C++ kernels as the CPU implementations of the cycleseg:: ops, registered with PyTorch's dispatcher
// (the schemas are defined once, in cycleseg/ops/library.py). Loading this extension registers them;
// the module itself holds one testing switch.
#include <torch/extension.h>
#include <torch/library.h>

#include "common.h"

namespace cycleseg {
std::tuple<at::Tensor, at::Tensor, at::Tensor> softmax_cross_entropy(const at::Tensor&, const at::Tensor&,
                                                                     const std::optional<at::Tensor>&, int64_t,
                                                                     c10::string_view);
at::Tensor softmax_cross_entropy_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                          const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&,
                                          int64_t, c10::string_view);
std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_relu(const at::Tensor&, double, double);
at::Tensor instance_norm_relu_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                       double);
at::Tensor lsgan_loss(const at::Tensor&, double);
at::Tensor lsgan_loss_backward(const at::Tensor&, const at::Tensor&, double);
at::Tensor lsgan_disc_loss(const at::Tensor&, const at::Tensor&);
std::tuple<at::Tensor, at::Tensor> lsgan_disc_loss_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&);
}  // namespace cycleseg

TORCH_LIBRARY_IMPL(cycleseg, CPU, m) {
  m.impl("softmax_cross_entropy", &cycleseg::softmax_cross_entropy);
  m.impl("softmax_cross_entropy_backward", &cycleseg::softmax_cross_entropy_backward);
  m.impl("instance_norm_relu", &cycleseg::instance_norm_relu);
  m.impl("instance_norm_relu_backward", &cycleseg::instance_norm_relu_backward);
  m.impl("lsgan_loss", &cycleseg::lsgan_loss);
  m.impl("lsgan_loss_backward", &cycleseg::lsgan_loss_backward);
  m.impl("lsgan_disc_loss", &cycleseg::lsgan_disc_loss);
  m.impl("lsgan_disc_loss_backward", &cycleseg::lsgan_disc_loss_backward);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("set_poison_outputs", [](bool on) {
    const bool before = cycleseg::poison_outputs();
    cycleseg::poison_outputs() = on;
    return before;
  }, "Outputs start NaN-filled while on (tests); returns the previous setting.");
}
