//! The `kabar` command (placeholder until the CLI issue): for now only the
//! crypto demo.
fn main() {}
