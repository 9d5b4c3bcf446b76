//! End-to-end scenarios against a real `onecard serve` process; one test binary.

mod front_door;
