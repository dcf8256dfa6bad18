use clap::Parser;

// A node makes many small, short-lived allocations per entry (records,
// messages); glibc malloc was a sixth of a loaded node's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = floe_node::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: starting the async runtime: {err}");
            std::process::exit(1);
        }
    };
    if let Err(err) = runtime.block_on(floe_node::cli::run(cli)) {
        std::process::exit(floe_node::cli::report(&err));
    }
}
