//! The device side of Tether.
