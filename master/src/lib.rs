//! drover master.
