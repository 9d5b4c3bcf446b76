//! End-to-end scenarios against a real `onecard serve` process; one test binary.

mod abuse;
mod api;
mod backup;
mod cell;
mod crash;
mod demo;
mod faults;
mod front_door;
mod loadtest;
mod monitoring;
mod pages;
mod secrets;
mod settlement;
mod shutdown;
mod support;
mod terminals;
mod workflows;
