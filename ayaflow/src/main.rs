//! The `ayaflow` binary: parse the configuration, run the agent, map errors to an exit code.

fn main() {
    println!("ayaflow: being written");
}
