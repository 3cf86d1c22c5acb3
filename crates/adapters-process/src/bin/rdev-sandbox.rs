//! The sandbox helper on its own, for this crate's tests; `rdev-api __sandbox` is the same
//! code in the server's binary.

use adapters_process::sandbox::{helper_main, HELPER_MODE_ARG};

fn main() {
    let mut args = std::env::args_os().skip(1);
    match args.next() {
        Some(mode) if mode == HELPER_MODE_ARG => helper_main(args),
        _ => {
            eprintln!("usage: rdev-sandbox {HELPER_MODE_ARG} <spec> -- <command>");
            std::process::exit(2);
        }
    }
}
