//! Hyper-V enlightenment surface emulated in user space (under construction).
