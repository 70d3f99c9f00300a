//! Bakes the libtorch library folder into the rpath (see build-support/).
include!("../../build-support/libtorch_rpath.rs");
