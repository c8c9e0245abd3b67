// The extension module. Each op's C++ kernels register themselves as the CPU kernels of its
// cycleseg:: ops from its own file (csrc/<op>.cpp: TORCH_LIBRARY_IMPL; the schemas are defined by
// cycleseg/ops/<op>.py), so loading the extension registers them all; the module itself holds one
// testing switch.
#include <torch/extension.h>

#include "common.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("set_poison_outputs", [](bool on) {
    const bool before = cycleseg::poison_outputs();
    cycleseg::poison_outputs() = on;
    return before;
  }, "Outputs start NaN-filled while on (tests); returns the previous setting.");
}
