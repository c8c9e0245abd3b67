"""Triton kernels of the fused ops (installed as cycleseg.kernels). Each module holds the @triton.jit
kernels of one op and its launchers; cycleseg.ops registers the launchers as PyTorch custom ops.
Set TRITON_INTERPRET=1 before importing to run them on CPU tensors (tests do)."""
