"""numba CPU kernels. Kernels do no validation and no allocation: the stage wrappers do."""
