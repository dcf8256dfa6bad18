//! `floe-afl <target>`: one of floe-fuzz's targets under AFL++ in
//! persistent mode. See `make fuzz` and docs/security.md.

use std::time::Duration;

/// Stack of the thread the targets run on: the engine keeps a worst-case
/// expression inside 2 MiB, the stack of a Rust thread, so the fuzz run
/// holds it to that rather than to the main thread's 8 MiB.
const STACK_BYTES: usize = 2 * 1024 * 1024;

/// Generous next to the expression cost limit, which keeps an evaluation
/// to well under a second in a release build.
const TIME_BOX: Duration = Duration::from_secs(2);

fn main() {
    let Some(name) = std::env::args().nth(1) else {
        eprintln!("usage: floe-afl <target>");
        std::process::exit(2);
    };
    let Some(target) = floe_fuzz::target(&name) else {
        let names: Vec<&str> = floe_fuzz::TARGETS.iter().map(|(name, _)| *name).collect();
        eprintln!("unknown target {name:?}; targets: {}", names.join(", "));
        std::process::exit(2);
    };
    floe_fuzz::set_time_box(TIME_BOX);
    let fuzzing = std::thread::Builder::new()
        .stack_size(STACK_BYTES)
        .spawn(move || afl::fuzz!(|data: &[u8]| target(data)));
    match fuzzing.map(|thread| thread.join()) {
        Ok(Ok(())) => {}
        _ => std::process::abort(),
    }
}
