import os
import tempfile

import torch

# Triton kernels run on CPU tensors through the interpreter when there is no GPU. The variable must be
# set before any module with @triton.jit is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# The built-in dataset is generated into a cache folder of the test session, not the user's.
os.environ.setdefault("CYCLESEG_CACHE", tempfile.mkdtemp(prefix="cycleseg-test-cache-"))
