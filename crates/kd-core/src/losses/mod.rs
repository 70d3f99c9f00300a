//! Loss kernels shared by every method.
