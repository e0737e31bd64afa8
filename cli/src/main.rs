//! `chatsync`: the command-line client of the chatsync daemon.

use std::process::ExitCode;

use chatsync::{args::Cli, commands, exit};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => exit::report(&e, json),
    }
}
