//! Prints the test-vector section of docs/PROTOCOL.md.
fn main() {
    print!("{}", onecard_protocol::vectors::markdown());
}
